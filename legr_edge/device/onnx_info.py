"""Facts about an ONNX file that decide how it can be deployed (opset, float type, Q/DQ).

Read with ``onnx`` only, no runtime: the profile command refuses a model whose
opset is newer than the device's runtime accepts before trying to build it, and
the TensorRT backend needs the float type because TensorRT 11 takes precision
from the ONNX types instead of builder flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from legr_edge.rundir import opset_of

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class OnnxInfo:
    opset: int  # default-domain opset
    float_type: str  # "fp32" | "fp16" (any fp16 initializer or input makes it fp16)
    has_qdq: bool  # explicit quantization present
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Load (without external data) and summarise; raises onnx/protobuf errors on corrupt files."""
    model = onnx.load(str(path), load_external_data=False)
    return info_from_model(model)


def info_from_model(model: onnx.ModelProto) -> OnnxInfo:
    opset = opset_of(model)
    g = model.graph
    init_names = {i.name for i in g.initializer}
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(i.data_type == fp16 for i in g.initializer) or any(
        v.type.tensor_type.elem_type == fp16 for v in g.input)
    return OnnxInfo(
        opset=int(opset),
        float_type="fp16" if has_fp16 else "fp32",
        has_qdq=any(n.op_type in QDQ_OPS for n in g.node),
        input_names=tuple(v.name for v in g.input if v.name not in init_names),
        output_names=tuple(v.name for v in g.output),
    )
