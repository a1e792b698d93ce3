"""The run directory contract: the one place both halves read and check a run (no torch).

A run directory is untrusted input (see README, "Threat model"): it is copied
between machines and people. What may be in it, and how each part is checked:

RUN/config.json          the search configuration (JSON object; only read, never executed)
RUN/flops_table.csv      one row per model: FLOPS_COLUMNS; names are plain names
                         (NAME_RE), numbers finite, top-1 in [0, 100], path = models/<name>
RUN/models/<name>/       arch.json (layer shapes as data) + weights.pt (plain state_dict)
RUN/onnx/manifest.json   {"format": MANIFEST_FORMAT, "models": [{"name", "file", "sha256", ...}]};
                         a file is ``<name>.onnx`` in onnx/ (its own name), and an entry without a
                         sha256 is not trusted
RUN/data/eval.npz        images uint8 N,H,W,C; labels int N (>= 0); mean/std float per
                         channel, finite, std > 0; read with allow_pickle=False

Nothing in a run directory names code that is run (a user model factory recorded in
arch.json is imported only when the user trusts it on the command line, see
legr_edge.models.registry), and no path in it may lead outside it: every relative
path is resolved (symlinks included) and must stay under the run's resolved root.

Problems of the run as a whole are LegrErrors (one line naming file, key and value);
problems of one model (missing or changed ONNX) are RuntimeErrors the profile command
records in that model's row.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from legr_edge.errors import LegrError
from legr_edge.io import read_csv, sha256_file

log = logging.getLogger(__name__)

FLOPS_TABLE = "flops_table.csv"
FLOPS_REQUIRED = ("name", "target", "macs", "macs_ratio", "params", "val_top1", "test_top1", "path")
# latency columns (issue 8): written by search, empty without a latency table
FLOPS_COLUMNS = FLOPS_REQUIRED + ("target_ms", "predicted_ms", "staircase_channels")
MANIFEST = "onnx/manifest.json"
MANIFEST_FORMAT = "legr_edge.onnx_manifest/1"
EVAL_DATA = "data/eval.npz"
EVAL_ARRAYS = ("images", "labels", "mean", "std")
CONFIG = "config.json"
ARCH = "arch.json"

# A model name: letters, digits, '.', '_', '-'; starts with a letter or digit; no path parts.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# ----- names and paths -------------------------------------------------------------------
def check_name(name: Any, where: str) -> str:
    """``name`` if it is a plain model name (NAME_RE, not '.'/'..'), else a LegrError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise LegrError(f"{where}: model name {name!r} is not a plain name "
                        "(letters, digits, '.', '_', '-'; no '/' or '..')")
    return name


def is_inside(path: Path, root: Path) -> bool:
    """True if ``path`` is ``root`` or below it (Path.is_relative_to, which 3.8 lacks)."""
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_inside(run: Path, rel: Any, where: str) -> Path:
    """``run / rel`` resolved (symlinks followed); LegrError if it leaves the run.

    Absolute paths, '..' that climbs out, and symlinks pointing outside are refused.
    """
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise LegrError(f"{where}: path {rel!r} is not a relative path inside the run")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise LegrError(f"{where}: path {rel!r} is absolute; run paths must be relative to the run")
    root = Path(run).resolve()
    target = (root / rel).resolve()
    if not is_inside(target, root):
        raise LegrError(f"{where}: path {rel!r} leads outside the run directory {run} "
                        f"(to {target}); refused")
    return target


def model_dir(run: Path, name: str) -> Path:
    """RUN/models/<name>, for a plain name, confined to the run."""
    check_name(name, f"{run / 'models'}")
    return resolve_inside(run, f"models/{name}", f"{run / FLOPS_TABLE}")


# ----- JSON files ----------------------------------------------------------------------------
def read_json(path: Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; missing, unreadable, non-UTF-8 or corrupt -> one-line LegrError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LegrError(f"{path}: missing ({what})") from None
    except UnicodeDecodeError as e:
        raise LegrError(f"{path}: not UTF-8 text ({what}; byte {e.start})") from None
    except OSError as e:
        raise LegrError(f"{path}: unreadable ({what}): {e.strerror or e}") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise LegrError(f"{path}: not valid JSON ({what}): {e}") from None
    except RecursionError:
        raise LegrError(f"{path}: nested too deeply ({what})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def read_json_object(path: Path, what: str) -> Dict[str, Any]:
    obj = read_json(path, what)
    if not isinstance(obj, dict):
        raise LegrError(f"{path}: expected a JSON object ({what}), got {type(obj).__name__}")
    return obj


def read_run_config(run: Path, *, required: bool = False) -> Dict[str, Any]:
    """RUN/config.json as a dict. Not required (the device report) -> {} with a warning."""
    path = Path(run) / CONFIG
    try:
        return read_json_object(path, "the run's configuration")
    except LegrError as e:
        if required:
            raise
        log.warning("%s; the report will not name model/dataset", e)
        return {}


def run_summary(run: Path) -> Dict[str, Any]:
    """model and dataset of the run, for reports (empty when config.json is unusable)."""
    cfg = read_run_config(run)
    return {k: cfg[k] for k in ("model", "dataset") if k in cfg}


def read_arch_json(run: Path, name: str) -> Dict[str, Any]:
    """models/<name>/arch.json as data (layer shapes under "modules"); never imports anything."""
    path = model_dir(run, name) / ARCH
    arch = read_json_object(path, "architecture of a saved model")
    modules = arch.get("modules")
    if not isinstance(modules, dict):
        raise LegrError(f"{path}: key 'modules' must be an object of layer entries")
    for layer, entry in modules.items():
        shapes = entry.get("shapes") if isinstance(entry, dict) else None
        if not isinstance(shapes, dict) or not all(
                isinstance(s, list) and all(_is_count(d) for d in s) for s in shapes.values()):
            raise LegrError(f"{path}: modules[{layer!r}].shapes must map tensor names to "
                            "lists of non-negative integers")
    return arch


def layer_shapes(run: Path, name: str) -> Dict[str, Dict[str, List[int]]]:
    """{layer: {tensor: shape}} of a saved model, read from its arch.json."""
    return {k: dict(v["shapes"]) for k, v in read_arch_json(run, name)["modules"].items()}


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 40


# ----- the flops table ------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRow:
    """One model of the run: its flops-table row plus its manifest entry (if any)."""

    name: str
    target: Optional[float]
    macs: Optional[float]
    macs_ratio: Optional[float]
    params: Optional[float]
    val_top1: Optional[float]
    test_top1: Optional[float]
    path: str
    manifest: Optional[Dict[str, Any]]

    @property
    def is_dense(self) -> bool:
        return self.name == "dense"


# column -> (low, high) for the numeric columns; None = unbounded
_NUMERIC = {"target": (0.0, 1.0), "macs": (0.0, None), "macs_ratio": (0.0, None),
            "params": (0.0, None), "val_top1": (0.0, 100.0), "test_top1": (0.0, 100.0),
            "target_ms": (0.0, None), "predicted_ms": (0.0, None)}


def number(value: Any, where: str, low: Optional[float] = None, high: Optional[float] = None,
           *, required: bool = False) -> Optional[float]:
    """A finite float in [low, high] from a table cell; '' is None; anything else -> LegrError."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            raise LegrError(f"{where}: empty, a number is needed")
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LegrError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise LegrError(f"{where}: {value!r} is not a finite number")
    if (low is not None and v < low) or (high is not None and v > high):
        raise LegrError(f"{where}: {value!r} is outside [{low if low is not None else '-inf'}, "
                        f"{high if high is not None else 'inf'}]")
    return v


def read_flops_table(run: Path) -> List[Dict[str, str]]:
    """RUN/flops_table.csv, checked: columns, plain unique names, numbers, paths inside RUN."""
    run = Path(run)
    path = run / FLOPS_TABLE
    if not run.is_dir():
        raise LegrError(f"{run}: not a directory (expected a run directory from legr_edge.search)")
    if not path.is_file():
        raise LegrError(f"{path}: missing; is {run} a run directory? "
                        f"(python -m legr_edge.search writes {FLOPS_TABLE})")
    header, rows = read_csv(path, with_header=True)
    missing = [c for c in FLOPS_REQUIRED if c not in header]
    if missing:
        raise LegrError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(needs {', '.join(FLOPS_REQUIRED)})")
    if not rows:
        raise LegrError(f"{path}: no models listed")
    seen = set()
    for i, r in enumerate(rows, start=2):
        where = f"{path} line {i}"
        name = check_name(r.get("name"), f"{where} column name")
        if name in seen:
            raise LegrError(f"{path}: duplicate model name {name!r}")
        seen.add(name)
        for col, (low, high) in _NUMERIC.items():
            number(r.get(col), f"{where} column {col}", low, high)
        if r.get("path"):
            resolve_inside(run, r["path"], f"{where} column path")
            if Path(r["path"]).as_posix().rstrip("/") != f"models/{name}":  # no model posing as another
                raise LegrError(f"{where} column path: {r['path']!r}, expected 'models/{name}'")
    return rows


def load_models(run: Path) -> List[ModelRow]:
    """The flops table joined with the ONNX manifest, in table order."""
    table = read_flops_table(run)  # first: "not a run directory" beats "no manifest"
    manifest = read_manifest(run)
    return [ModelRow(
        name=r["name"], target=number(r.get("target"), "target"), macs=number(r.get("macs"), "macs"),
        macs_ratio=number(r.get("macs_ratio"), "macs_ratio"), params=number(r.get("params"), "params"),
        val_top1=number(r.get("val_top1"), "val_top1"), test_top1=number(r.get("test_top1"), "test_top1"),
        path=r.get("path") or f"models/{r['name']}", manifest=manifest.get(r["name"]),
    ) for r in table]


# ----- the ONNX manifest ------------------------------------------------------------------------
def manifest_entry_problem(entry: Dict[str, Any]) -> Optional[str]:
    """Why a manifest entry cannot be trusted (None if it can): file and sha256 are checked."""
    file = entry.get("file", f"{entry['name']}.onnx")
    if not isinstance(file, str) or not NAME_RE.match(file) or not file.endswith(".onnx"):
        return f"file {file!r} is not a plain <name>.onnx in onnx/"
    if file != f"{entry['name']}.onnx":  # no model measured and reported as another
        return f"file {file!r} is not {entry['name']}.onnx"
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not SHA256_RE.match(digest):
        return (f"no valid sha256 for {file} ({digest!r}); an unverified file is not trusted "
                "(re-run legr_edge.export)")
    return None


def read_manifest(run: Path) -> Dict[str, Dict[str, Any]]:
    """RUN/onnx/manifest.json as {name: entry}; the whole file's shape is checked here."""
    path = Path(run) / MANIFEST
    if not path.is_file():
        raise LegrError(f"{path}: missing (python -m legr_edge.export writes it with the ONNX files)")
    data = read_json(path, "ONNX manifest")
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LegrError(f"{path}: not a valid manifest; expected "
                        "{\"models\": [{\"name\": ..., \"file\": ..., \"sha256\": ...}]}")
    fmt = data.get("format", MANIFEST_FORMAT)
    if fmt != MANIFEST_FORMAT:
        raise LegrError(f"{path}: format {fmt!r}, expected {MANIFEST_FORMAT!r}")
    out: Dict[str, Dict[str, Any]] = {}
    for e in entries:
        name = check_name(e.get("name"), f"{path} entry")
        if name in out:
            raise LegrError(f"{path}: model {name!r} listed twice")
        out[name] = e
    return out


def check_onnx(run: Path, row: ModelRow) -> Tuple[Path, str]:
    """Path and sha256 of a model's ONNX; RuntimeError (recorded per model) if not usable."""
    if row.manifest is None:
        raise RuntimeError(f"{row.name} not in {MANIFEST} (re-run legr_edge.export)")
    if row.manifest.get("status", "ok") != "ok":
        raise RuntimeError(f"export of {row.name} failed: {row.manifest.get('error') or 'no reason given'}")
    problem = manifest_entry_problem(row.manifest)
    if problem:
        raise RuntimeError(f"{MANIFEST} entry {row.name}: {problem}")
    try:
        path = resolve_inside(run, f"onnx/{row.manifest.get('file', row.name + '.onnx')}", MANIFEST)
    except LegrError as e:
        raise RuntimeError(str(e)) from None
    if not path.is_file():
        raise RuntimeError(f"{path}: ONNX file missing (re-run legr_edge.export)")
    digest = sha256_file(path)
    want = row.manifest["sha256"]
    if digest != want:
        raise RuntimeError(f"{path}: sha256 {digest[:12]}... does not match manifest "
                           f"{want[:12]}... (file changed or truncated; re-export or re-copy)")
    return path, digest


def verified_onnx(run: Path, name: str) -> Tuple[Path, str]:
    """Path and sha256 of model ``name``'s ONNX, checked against the manifest; LegrError if not."""
    entry = read_manifest(run).get(name)
    if entry is None:
        raise LegrError(f"{Path(run) / MANIFEST}: no {name!r} model (export the run first)")
    row = ModelRow(name, None, None, None, None, None, None, f"models/{name}", entry)
    try:
        return check_onnx(Path(run), row)
    except RuntimeError as e:
        raise LegrError(str(e)) from None


def opset_of(model: Any) -> int:
    """Default-domain opset of an onnx.ModelProto (0 if it imports none)."""
    return int(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))


# ----- eval data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalData:
    images: np.ndarray  # uint8 N,H,W,C
    labels: np.ndarray  # int64 N
    mean: np.ndarray  # float32 C
    std: np.ndarray  # float32 C

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Model input for images[start:stop]: normalised float32 NCHW."""
        return normalize(self.images[start:stop], self.mean, self.std)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ``(x / 255 - mean) / std``: the one input normalisation."""
    x = (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def load_eval(run: Path) -> EvalData:
    """RUN/data/eval.npz, read without pickle and validated."""
    path = Path(run) / EVAL_DATA
    if not path.is_file():
        raise LegrError(f"{path}: missing; the deployed-accuracy check needs it "
                        "(legr_edge.export writes it next to the ONNX files)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise LegrError(f"{path}: a single array, not an .npz archive of {', '.join(EVAL_ARRAYS)}")
        with z:
            missing = [k for k in EVAL_ARRAYS if k not in z.files]
            if missing:
                raise LegrError(f"{path}: missing array(s) {', '.join(missing)} "
                                f"(needs {', '.join(EVAL_ARRAYS)})")
            data = {k: z[k] for k in EVAL_ARRAYS}
    except LegrError:
        raise
    except Exception as e:  # zipfile/npy format errors, object arrays (pickle refused), I/O
        raise LegrError(f"{path}: unreadable as .npz ({type(e).__name__}: {e})") from None
    return validate_eval(path, data)


def validate_eval(path: Any, d: Dict[str, np.ndarray]) -> EvalData:
    """Check the eval arrays (the same rules for the writer and the reader)."""
    images, labels = np.asarray(d["images"]), np.asarray(d["labels"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0 or min(images.shape) == 0:
        raise LegrError(f"{path}: 'images' must be non-empty uint8 N,H,W,C, got {images.dtype} {images.shape}")
    if (labels.ndim != 1 or labels.shape[0] != images.shape[0]
            or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_)):
        raise LegrError(f"{path}: 'labels' must be N={images.shape[0]} integers, "
                        f"got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise LegrError(f"{path}: 'labels' must be class indices >= 0, found {labels.min()}")
    c = images.shape[3]
    mean, std = np.asarray(d["mean"]), np.asarray(d["std"])
    for key, arr in (("mean", mean), ("std", std)):
        if arr.shape != (c,) or not np.issubdtype(arr.dtype, np.floating):
            raise LegrError(f"{path}: '{key}' must be {c} floats, got {arr.dtype} {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise LegrError(f"{path}: '{key}' holds NaN or inf: {arr.tolist()}")
    if np.any(std <= 0):
        raise LegrError(f"{path}: 'std' must be > 0, got {std.tolist()}")
    return EvalData(images, labels.astype(np.int64), mean.astype(np.float32), std.astype(np.float32))


def write_eval(path: Path, data: EvalData) -> None:
    """Write eval.npz atomically (validated first: a bad set never replaces a good one)."""
    from legr_edge.io import atomic_path

    validate_eval(path, {"images": data.images, "labels": data.labels, "mean": data.mean, "std": data.std})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=data.images, labels=data.labels.astype(np.int64),
                                mean=data.mean.astype(np.float32), std=data.std.astype(np.float32))


def unique_names(names: Sequence[str], what: str) -> None:
    """LegrError if two entries map to one name (e.g. targets 0.501 and 0.504 -> legr_0.50)."""
    seen: Dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise LegrError(f"{what}: entries {seen[n] + 1} and {i + 1} both become {n!r}")
        seen[n] = i
