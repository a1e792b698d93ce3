"""Reading a run directory written by the workstation half (no torch needed).

RUN/flops_table.csv     one row per model: name,target,macs,macs_ratio,params,val_top1,test_top1,path
RUN/onnx/manifest.json  {"models": [{"name", "file", "sha256", "opset", "input_name", ...}]}
RUN/onnx/<name>.onnx
RUN/data/eval.npz       images uint8 NHWC, labels int64, mean/std float32 per channel

Problems with the run as a whole (no table, missing columns, no manifest, bad eval
data) are LegrErrors; problems of one model (missing/corrupt ONNX, hash mismatch)
are returned per model so the others can still be profiled.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from legr_edge.errors import LegrError
from legr_edge.io import read_csv, sha256_file

log = logging.getLogger(__name__)

FLOPS_COLUMNS = ("name", "target", "macs", "macs_ratio", "params", "val_top1", "test_top1", "path")


@dataclass(frozen=True)
class ModelRow:
    """One model of the run: its flops-table row plus its manifest entry (if any)."""

    name: str
    target: float | None
    macs: float | None
    macs_ratio: float | None
    params: float | None
    val_top1: float | None
    test_top1: float | None
    path: str
    manifest: dict[str, Any] | None

    @property
    def is_dense(self) -> bool:
        return self.name == "dense"


@dataclass(frozen=True)
class EvalData:
    images: np.ndarray  # uint8 N,H,W,C
    labels: np.ndarray  # int64 N
    mean: np.ndarray  # float32 C
    std: np.ndarray  # float32 C

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Model input for images[start:stop]: normalised float32 NCHW."""
        x = self.images[start:stop].astype(np.float32) / 255.0
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_flops_table(run: Path) -> list[dict[str, str]]:
    path = run / "flops_table.csv"
    if not run.is_dir():
        raise LegrError(f"{run}: not a directory (expected a run directory from legr_edge.search)")
    if not path.is_file():
        raise LegrError(f"{path}: missing; is {run} a run directory? "
                        f"(python -m legr_edge.search writes flops_table.csv)")
    rows = read_csv(path)
    header = list(rows[0].keys()) if rows else _header(path)
    missing = [c for c in FLOPS_COLUMNS if c not in header]
    if missing:
        raise LegrError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(needs {', '.join(FLOPS_COLUMNS)})")
    if not rows:
        raise LegrError(f"{path}: no models listed")
    names = [r["name"] for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LegrError(f"{path}: duplicate model name(s) {', '.join(dupes)}")
    return rows


def _header(path: Path) -> list[str]:
    first = path.read_text(encoding="utf-8").splitlines()[:1]
    return [c.strip() for c in first[0].split(",")] if first else []


def read_manifest(run: Path) -> dict[str, dict[str, Any]]:
    path = run / "onnx" / "manifest.json"
    if not path.is_file():
        raise LegrError(f"{path}: missing (python -m legr_edge.export writes it with the ONNX files)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["models"]
        return {e["name"]: e for e in entries}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LegrError(f"{path}: not a valid manifest ({type(e).__name__}: {e}); "
                        "expected {\"models\": [{\"name\": ..., \"file\": ..., \"sha256\": ...}]}") from None


def load_models(run: Path) -> list[ModelRow]:
    """The flops table joined with the ONNX manifest, in table order."""
    table = read_flops_table(run)  # first: "not a run directory" beats "no manifest"
    manifest = read_manifest(run)
    return [ModelRow(
        name=r["name"], target=_float(r.get("target")), macs=_float(r.get("macs")),
        macs_ratio=_float(r.get("macs_ratio")), params=_float(r.get("params")),
        val_top1=_float(r.get("val_top1")), test_top1=_float(r.get("test_top1")),
        path=r.get("path") or f"models/{r['name']}", manifest=manifest.get(r["name"]),
    ) for r in table]


def check_onnx(run: Path, row: ModelRow) -> tuple[Path, str]:
    """Path and sha256 of a model's ONNX; RuntimeError (recorded per model) if unusable."""
    if row.manifest is None:
        raise RuntimeError(f"{row.name} not in onnx/manifest.json (re-run legr_edge.export)")
    path = run / "onnx" / row.manifest.get("file", f"{row.name}.onnx")
    if not path.is_file():
        raise RuntimeError(f"{path}: ONNX file missing (re-run legr_edge.export)")
    digest = sha256_file(path)
    want = row.manifest.get("sha256")
    if want and digest != want:
        raise RuntimeError(f"{path}: sha256 {digest[:12]}... does not match manifest "
                           f"{str(want)[:12]}... (file changed or truncated; re-export or re-copy)")
    return path, digest


def load_eval(run: Path) -> EvalData:
    path = run / "data" / "eval.npz"
    if not path.is_file():
        raise LegrError(f"{path}: missing; the deployed-accuracy check needs it "
                        "(legr_edge.export writes it next to the ONNX files)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("images", "labels", "mean", "std")}
    except KeyError as e:
        raise LegrError(f"{path}: missing array {e} (needs images, labels, mean, std)") from None
    except (OSError, ValueError) as e:
        raise LegrError(f"{path}: unreadable ({e})") from None
    return _validate_eval(path, data)


def _validate_eval(path: Path, d: dict[str, np.ndarray]) -> EvalData:
    images, labels = d["images"], d["labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise LegrError(f"{path}: 'images' must be uint8 N,H,W,C, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.shape[0] == 0:
        raise LegrError(f"{path}: 'labels' must be N={images.shape[0]} integers, got {labels.shape}")
    c = images.shape[3]
    mean, std = d["mean"].astype(np.float32), d["std"].astype(np.float32)
    if mean.shape != (c,) or std.shape != (c,) or np.any(std <= 0):
        raise LegrError(f"{path}: 'mean'/'std' must be {c} floats (std > 0)")
    return EvalData(images, labels.astype(np.int64), mean, std)


def read_run_config(run: Path) -> dict[str, Any]:
    """model/dataset from RUN/config.json, for the report (absent keys are fine)."""
    path = run / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); report will not name model/dataset", path, e)
        return {}
    return {k: cfg.get(k) for k in ("model", "dataset") if k in cfg}
