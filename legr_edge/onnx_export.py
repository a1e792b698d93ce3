"""One saved model to one checked ONNX file: torch export, full ONNX check, opset check,
ONNX Runtime vs torch parity.

Opset: torch's dynamo exporter writes opset 18 or newer only (asked for less, it
silently writes 18), while TensorRT 8.5/8.6 on older Jetsons parses 17 at most. So
opsets below 18 go through the TorchScript exporter, 18 and above through dynamo,
and the opset actually written is checked.
"""
from __future__ import annotations

import contextlib
import io as _io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from legr_edge import io
from legr_edge.errors import LegrError
from legr_edge.fold import fold_batchnorm
from legr_edge.rundir import normalize, opset_of

log = logging.getLogger(__name__)

PARITY_WARN = 1e-3
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_model(model_dir: Path, dest: Path, opset: int, images: np.ndarray,
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Export one saved model; check it fully; measure ORT-vs-torch parity on ``images``."""
    import onnx
    import torch
    from legr_edge.models.arch import load_model

    model = fold_batchnorm(load_model(model_dir))
    x = torch.from_numpy(normalize(images, meta["mean"], meta["std"]))
    with io.atomic_path(dest) as tmp:
        _torch_export(model, _example_batch(x), tmp, opset)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        written = opset_of(proto)
        if written != opset:
            raise LegrError(f"{dest.name}: asked for opset {opset}, the exporter wrote {written}")
        err = _parity(tmp, model, x)
    if not np.isfinite(err):
        raise RuntimeError(f"{dest.name}: the exported model gives NaN or inf outputs")
    if err > PARITY_WARN:
        log.warning("%s: ONNX Runtime differs from torch by %.2e (max abs)", dest.name, err)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    bn_left = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    return {"sha256": io.sha256_file(dest), "input_shape": dims, "parity_max_abs_err": err,
            "parity_samples": int(len(x)), "batchnorm_nodes": bn_left, "bytes": dest.stat().st_size}


def _torch_export(model, example, path: Path, opset: int) -> None:
    import torch

    # At every export torch.onnx warns that torchvision's ops are not registered; importing
    # torch resets its loggers' levels, so this is set here rather than in setup_logging.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    quiet = contextlib.redirect_stdout(_io.StringIO())
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        if opset >= 18:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=True,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), external_data=False)
        else:
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _example_batch(x):
    """Two images: torch.export specializes size-1 dimensions, which breaks a dynamic batch."""
    return x[:2] if len(x) >= 2 else x[:1].repeat(2, *([1] * (x.dim() - 1)))


def _parity(path: Path, model, x) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.max(np.abs(got - want)))
