"""Device profiles: one strict TOML file per target (how to run and how to time).

A profile says which runtime measures the models (ONNX Runtime, TensorRT, or torch
eager for side-by-side numbers), at which precision and batch sizes, and how long
to time them. The search command reads ``round_to`` from the same file, so the
channel counts it produces are the ones the device likes.

Parsing is strict on purpose: a typo such as ``min_iter = 50`` silently falling
back to a default would give numbers nobody asked for. Every unknown key, wrong
type or out-of-range value is a :class:`LegrError` naming the file and the key.

Lookup: ``load_profile("jetson-orin-nano")`` -- a bare name (no ``.toml``, no
directory) -- is always one of the profiles shipped with the package (the top-level
``profiles/`` folder of the repository, installed as package data ``legr_edge/profiles``
and read through importlib.resources), so it means the same thing from any working
directory. Anything else is a path and is read as is; a ``profiles/`` folder in the
current directory never changes what a bare name means (pass its file as a path).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from legr_edge.errors import LegrError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "cuda")
# latency: one inference in flight, enqueue + wait, as a synchronous application sees it.
# throughput: two in flight (trtexec's default), the GPU never idles between inferences.
TIMING_MODES = ("latency", "throughput")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

PACKAGED_DIR = "profiles"  # legr_edge/profiles in an installed package (setup.py maps it)


def builtin_profiles_dir() -> Path | None:
    """The folder of shipped profiles: package data when installed, else the checkout's.

    Installed (wheel): ``legr_edge/profiles``, located through importlib.resources.
    Source checkout or editable install: the repository's top-level ``profiles/``
    (recognised by the ``setup.cfg`` beside it, so no unrelated folder is picked up).
    """
    packaged = _package_root() / PACKAGED_DIR
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.cfg").is_file() and (checkout / "profiles").is_dir():
        return checkout / "profiles"
    return None


def _package_root() -> Path:
    """The installed ``legr_edge`` package folder (importlib.resources.files on 3.9+)."""
    if sys.version_info >= (3, 9):
        from importlib.resources import files
        return Path(str(files("legr_edge")))
    import legr_edge  # 3.8: no files(); the package is a plain folder on disk
    return Path(legr_edge.__file__).parent


def builtin_profile_names() -> list[str]:
    """Names accepted as a bare ``--profile NAME``."""
    d = builtin_profiles_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d else []


@dataclass(frozen=True)
class Profile:
    """How one target device runs and times a model. Built by :func:`load_profile`."""

    name: str
    backend: str
    precision: str
    description: str = ""
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    threads: int = 0
    providers: tuple[str, ...] = ()
    warmup_s: float = 1.0
    min_iters: int = 100
    min_seconds: float = 3.0
    workspace_mib: int = 1024
    cuda_graphs: bool = False
    dla_core: int = -1
    opset: int = 18
    round_to: int = 1
    timing_mode: str = "latency"
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        d["providers"] = list(self.providers)
        return d

    def digest(self) -> str:
        """sha256 over the settings that change a measurement (not name/description/source).

        Used to decide whether an earlier measurement can be reused.
        """
        d = self.to_dict()
        for k in ("name", "description", "source"):
            d.pop(k)
        if d["timing_mode"] == "latency":  # the default: digests of older results stay valid
            d.pop("timing_mode")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def uses_gpu(self) -> bool:
        return self.device == "cuda"


# key -> (python type(s) accepted from TOML, converter); `name` may be given too.
_KEY_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a string"),
    "description": (str, "a string"),
    "backend": (str, "a string"),
    "precision": (str, "a string"),
    "device": (str, "a string"),
    "batch_sizes": (list, "a list of integers"),
    "threads": (int, "an integer"),
    "providers": (list, "a list of strings"),
    "warmup_s": ((int, float), "a number"),
    "min_iters": (int, "an integer"),
    "min_seconds": ((int, float), "a number"),
    "workspace_mib": (int, "an integer"),
    "cuda_graphs": (bool, "true or false"),
    "dla_core": (int, "an integer"),
    "opset": (int, "an integer"),
    "round_to": (int, "an integer"),
    "timing_mode": (str, "a string"),
}
_REQUIRED = ("backend", "precision")


def load_profile(path_or_name: str | os.PathLike) -> Profile:
    """Load and validate a profile from a path or a bare name (see module doc)."""
    try:
        text, source, stem = _find_profile_text(str(path_or_name))
    except UnicodeDecodeError as e:
        raise LegrError(f"profile {path_or_name}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise LegrError(f"profile {path_or_name}: unreadable: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LegrError(f"{source}: not valid TOML: {e}") from None
    return profile_from_dict(raw, source=source, default_name=stem)


def available_profiles() -> list[str]:
    """Bare names :func:`load_profile` resolves (the shipped profiles)."""
    return builtin_profile_names()


def _find_profile_text(spec: str) -> tuple[str, str, str]:
    """Return (toml text, source description, default name) for a name or a path."""
    p = Path(spec)
    is_name = p.suffix != ".toml" and os.sep not in spec and "/" not in spec
    if not is_name:
        if p.is_file():
            return p.read_text(encoding="utf-8"), str(p), p.stem
        raise LegrError(f"profile file {spec!r} not found; shipped profiles (pass a bare "
                        f"name): {', '.join(available_profiles()) or 'none found'}")
    d = builtin_profiles_dir()
    shipped = d / f"{spec}.toml" if d else None
    stray = Path("profiles") / f"{spec}.toml"
    if shipped is not None and shipped.is_file():
        if stray.is_file() and stray.resolve() != shipped.resolve():
            log.warning("profile %r: using the shipped profile %s, not %s in the current "
                        "directory (pass --profile %s to use that file)", spec, shipped, stray,
                        stray)
        return shipped.read_text(encoding="utf-8"), f"<shipped {spec}>", spec
    hint = f"; to use {stray} pass it as a path: --profile {stray}" if stray.is_file() else ""
    raise LegrError(f"profile {spec!r} is not a shipped profile{hint}; shipped: "
                    f"{', '.join(available_profiles()) or 'none found'}")


def profile_from_dict(raw: Mapping[str, Any], *, source: str, default_name: str) -> Profile:
    """Type-check and range-check a parsed TOML table and build a Profile."""
    _check_keys(raw, source)
    values: dict[str, Any] = {k: v for k, v in raw.items()}
    values.setdefault("name", default_name)
    if "batch_sizes" in values:
        values["batch_sizes"] = tuple(_int_list(values["batch_sizes"], source))
    if "providers" in values:
        values["providers"] = tuple(_str_list(values["providers"], source))
    elif values.get("backend") == "onnxruntime":
        values["providers"] = ("CPUExecutionProvider",)
    for k in ("warmup_s", "min_seconds"):
        if k in values:
            values[k] = float(values[k])
    prof = Profile(source=source, **values)
    _check_values(prof, source)
    return prof


def _check_keys(raw: Mapping[str, Any], source: str) -> None:
    known = set(_KEY_TYPES)
    for key, value in raw.items():
        if key not in known:
            raise LegrError(f"{source}: unknown key {key!r} (known keys: {', '.join(sorted(known))})")
        types, wanted = _KEY_TYPES[key]
        # bool is a subclass of int: `threads = true` must not pass as 1.
        if isinstance(value, bool) and types is not bool:
            raise LegrError(f"{source}: key {key!r} must be {wanted}, got {value!r}")
        if not isinstance(value, types):
            raise LegrError(f"{source}: key {key!r} must be {wanted}, got {value!r}")
    for key in _REQUIRED:
        if key not in raw:
            raise LegrError(f"{source}: missing required key {key!r}")


def _int_list(value: list, source: str) -> list[int]:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise LegrError(f"{source}: key 'batch_sizes' must be a non-empty list of integers, got {value!r}")
    return list(value)


def _str_list(value: list, source: str) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise LegrError(f"{source}: key 'providers' must be a list of strings, got {value!r}")
    return list(value)


def _check_values(p: Profile, source: str) -> None:
    """Range and consistency checks; each failure names the key."""
    def bad(key: str, why: str) -> LegrError:
        return LegrError(f"{source}: key {key!r}: {why}, got {getattr(p, key)!r}")

    if not _NAME_RE.match(p.name):
        raise bad("name", "must be letters, digits, '.', '_' or '-' (it becomes a file name)")
    if p.backend not in BACKENDS:
        raise bad("backend", f"must be one of {', '.join(BACKENDS)}")
    if p.precision not in PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
    if p.device not in DEVICES:
        raise bad("device", f"must be one of {', '.join(DEVICES)}")
    if p.timing_mode not in TIMING_MODES:
        raise bad("timing_mode", f"must be one of {', '.join(TIMING_MODES)}")
    if any(b < 1 for b in p.batch_sizes) or len(set(p.batch_sizes)) != len(p.batch_sizes):
        raise bad("batch_sizes", "must be distinct positive integers")
    _check_ranges(p, bad)
    _check_backend_combination(p, bad)


def _check_ranges(p: Profile, bad) -> None:
    if p.threads < 0:
        raise bad("threads", "must be >= 0 (0 = runtime default)")
    for key in ("warmup_s", "min_seconds"):  # NaN/inf would time forever (or never)
        v = getattr(p, key)
        if not math.isfinite(v) or not 0 <= v <= 3600:
            raise bad(key, "must be a finite number of seconds in [0, 3600]")
    if not 1 <= p.min_iters <= 10_000_000:
        raise bad("min_iters", "must be between 1 and 10000000")
    if p.workspace_mib < 1:
        raise bad("workspace_mib", "must be >= 1")
    if p.dla_core < -1:
        raise bad("dla_core", "must be -1 (no DLA) or a DLA core index >= 0")
    if not 7 <= p.opset <= 30:
        raise bad("opset", "must be an ONNX opset between 7 and 30")
    if p.round_to < 1:
        raise bad("round_to", "must be >= 1")


def _check_backend_combination(p: Profile, bad) -> None:
    """Refuse combinations that would silently measure something else."""
    if p.backend == "tensorrt" and p.device != "cuda":
        raise bad("device", "backend 'tensorrt' runs on the GPU: set device = \"cuda\"")
    if p.backend == "onnxruntime":
        if not p.providers:
            raise bad("providers", "must list at least one ONNX Runtime execution provider")
        gpu = any(x in GPU_PROVIDERS for x in p.providers)
        if gpu != p.uses_gpu:
            raise bad("device", "must be \"cuda\" exactly when providers include a CUDA/TensorRT provider")
        if p.precision != "fp32" and "TensorrtExecutionProvider" not in p.providers:
            raise bad("precision", "fp16/int8 with onnxruntime needs TensorrtExecutionProvider "
                      "(the CPU and CUDA providers run the FP32 ONNX as is)")
    if p.dla_core >= 0:
        if p.precision == "fp32":
            raise bad("dla_core", "DLA runs only fp16 or int8: set precision = \"fp16\"")
        if p.backend == "torch":
            raise bad("dla_core", "DLA is reachable only through TensorRT")
    if p.timing_mode == "throughput" and p.backend != "tensorrt":
        raise bad("timing_mode", "throughput mode (two inferences in flight) is implemented "
                  "for backend 'tensorrt' only")
    if p.cuda_graphs and not p.uses_gpu:
        raise bad("cuda_graphs", "CUDA graphs need device = \"cuda\"")


def profile_field_names() -> list[str]:
    """The TOML keys, in declaration order (for docs and error messages)."""
    return [f.name for f in fields(Profile) if f.name != "source"]
