"""FP32 -> FP16 ONNX conversion on the device, for TensorRT >= 11 (no FP16 builder flag).

TensorRT 11 builds strongly typed engines: the precision is that of the ONNX types,
so an ``fp16`` profile needs an FP16 ONNX. The workstation exports FP32; we convert
here with onnxconverter-common's ``float16`` converter (torch-free), keeping the graph
inputs and outputs FP32 (``keep_io_types=True``) so the backend feeds and reads the same
float32 arrays as for every other engine. Accuracy is not assumed: the profile command
measures the deployed top-1 of the converted engine on RUN/data/eval.npz and writes it
next to the FP32 table value (``deployed_top1``, ``top1_drop``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from legr_edge.io import write_bytes

log = logging.getLogger(__name__)

HOW = "`pip install onnxconverter-common` (or legr_edge[fp16])"


def converter_available() -> bool:
    """True when onnxconverter-common's float16 converter can be imported."""
    try:
        from onnxconverter_common import float16  # noqa: F401
    except ImportError:
        return False
    return True


def convert_to_fp16(src: Path, dst: Path) -> Path:
    """Write an FP16 copy of ``src`` (FP32 inputs/outputs kept) to ``dst``; returns ``dst``."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise RuntimeError(f"FP16 conversion needs onnxconverter-common: {HOW}") from None
    model = onnx.load(str(src))
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    write_bytes(dst, half.SerializeToString())
    log.info("%s: converted to FP16 (inputs/outputs stay FP32) -> %s", src.name, dst.name)
    return dst
