"""The deployed-accuracy set of a run (RUN/data/eval.npz): the test split of the run's data
set as uint8 + labels + the dense model's normalisation. Built here, written and read
through legr_edge.rundir (no torch)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from legr_edge.errors import LegrError
from legr_edge.rundir import CONFIG, EvalData, read_arch_json, read_run_config, validate_eval

log = logging.getLogger(__name__)


def make_eval_data(run: Path, limit: int) -> EvalData:
    """At most ``limit`` test images of the run's data set, validated, not yet written."""
    from legr_edge.data import load_dataset

    if not isinstance(limit, int) or limit < 1:
        raise LegrError(f"--eval-limit must be >= 1, got {limit!r}")
    config = read_run_config(run, required=True)
    dataset, data_dir, val_fraction = _config_fields(run / CONFIG, config)
    dense = read_arch_json(run, "dense")
    where = run / "models" / "dense" / "arch.json"
    size = _input_size(where, dense)
    mean, std = (_floats(where, dense, k) for k in ("mean", "std"))
    bundle = load_dataset(dataset, data_dir, val_fraction=val_fraction, seed=0,
                          image_size=size[1:] if dataset == "imagefolder" else None)
    n = min(len(bundle.test), limit)
    images, labels = bundle.test.get(np.arange(n))
    data = validate_eval(f"eval data of {run}", {"images": images, "labels": labels,
                                                 "mean": mean, "std": std})
    if data.images.shape[3] != size[0] or list(data.images.shape[1:3]) != list(size[1:]):
        raise LegrError(f"{where}: input_size {size} but the data set gives "
                        f"{[data.images.shape[3], *data.images.shape[1:3]]}")
    log.info("eval data: %d test images of %s", n, dataset)
    return data


def _config_fields(path: Path, cfg: dict[str, Any]) -> tuple[str, str | None, float]:
    dataset, data_dir, vf = cfg.get("dataset"), cfg.get("data_dir"), cfg.get("val_fraction", 0.1)
    if not isinstance(dataset, str):
        raise LegrError(f"{path}: 'dataset' must be a data set name, got {dataset!r}")
    if data_dir is not None and not isinstance(data_dir, str):
        raise LegrError(f"{path}: 'data_dir' must be a path or null, got {data_dir!r}")
    if not isinstance(vf, (int, float)) or isinstance(vf, bool) or not 0 < vf < 1:
        raise LegrError(f"{path}: 'val_fraction' must be in (0, 1), got {vf!r}")
    return dataset, data_dir, float(vf)


def _input_size(path: Path, arch: dict[str, Any]) -> list[int]:
    size = arch.get("input_size")
    if (not isinstance(size, list) or len(size) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 16384 for d in size)):
        raise LegrError(f"{path}: 'input_size' must be [C, H, W] positive integers, got {size!r}")
    return size


def _floats(path: Path, arch: dict[str, Any], key: str) -> np.ndarray:
    v = arch.get(key)
    if not isinstance(v, list) or not v or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise LegrError(f"{path}: {key!r} must be a list of finite numbers, got {v!r}")
    return np.asarray(v, np.float32)
