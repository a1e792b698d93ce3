"""ONNX side of the latency table: layer signatures, single-layer graphs, pruned graphs.

Torch-free on purpose: the table is built on the device, from the dense ONNX file the
workstation exported (BatchNorm folded, weights named after the torch modules, e.g.
``layer1.0.conv1.weight``), so the search can match table layers to its own layers by
name.

Channel groups are found by propagating channel identity through the graph: a Conv or
Gemm starts a new group at its output (a depthwise Conv passes its input's group on),
element-wise ops pass it on, and binary element-wise ops (residual ``Add``) merge the
groups of their inputs. A group touching a graph input or output is fixed.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

PASS_THROUGH = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Identity",
                "BatchNormalization", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool",
                "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Tanh", "Elu", "Selu"}
MERGING = {"Add", "Mul", "Sub", "Div", "Max", "Min", "Sum"}
PER_CHANNEL_INPUTS = {"BatchNormalization": (1, 2, 3, 4)}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One conv/linear layer of the dense network, as the table sees it."""

    name: str             # torch module name (initializer name without ".weight")
    op: str               # "conv" or "linear"
    cin: int
    cout: int
    kernel: Tuple[int, int] = (1, 1)
    strides: Tuple[int, int] = (1, 1)
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: Tuple[int, int] = (1, 1)
    groups: int = 1
    hw: Tuple[int, int] = (1, 1)   # input height, width
    out_hw: Tuple[int, int] = (1, 1)
    in_group: int = -1            # channel group ids (-1: fixed)
    out_group: int = -1

    @property
    def depthwise(self) -> bool:
        return self.op == "conv" and self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def signature(self) -> str:
        """Everything that decides the layer's latency except the two channel counts' pruning."""
        if self.op == "linear":
            return f"linear in{self.cin} out{self.cout}"
        dw = " dw" if self.depthwise else ""
        return (f"conv in{self.cin} out{self.cout} k{self.kernel[0]}x{self.kernel[1]} "
                f"s{self.strides[0]}x{self.strides[1]} p{'.'.join(map(str, self.pads))} "
                f"d{self.dilations[0]}x{self.dilations[1]} g{self.groups}{dw} "
                f"hw{self.hw[0]}x{self.hw[1]}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(signature=self.signature, depthwise=self.depthwise)
        return d


class _Groups:
    """Union-find over channel groups."""

    def __init__(self) -> None:
        self.parent: List[int] = []
        self.size: List[int] = []

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
        return a


@dataclasses.dataclass
class DenseGraph:
    """The dense model, its layers and channel groups (group id -> full width, fixed?)."""

    model: onnx.ModelProto
    layers: List[LayerSpec]
    group_size: Dict[int, int]
    fixed: Dict[int, bool]
    tensor_group: Dict[str, int]
    input_name: str
    input_shape: Tuple[int, ...]   # without batch

    @property
    def prunable_groups(self) -> List[int]:
        return sorted(g for g in self.group_size if not self.fixed[g])


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shapes(model: onnx.ModelProto) -> Dict[str, List[Optional[int]]]:
    inferred = shape_inference.infer_shapes(model)
    out: Dict[str, List[Optional[int]]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def read_dense(path) -> DenseGraph:
    """Layers and channel groups of a dense ONNX file; LegrError naming the file if unusable."""
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise LegrError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    try:
        return analyse(model)
    except LegrError as e:
        raise LegrError(f"{path}: {e}") from None


def analyse(model: onnx.ModelProto) -> DenseGraph:
    shapes = _shapes(model)
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise LegrError(f"expected one graph input, found {len(graph_inputs)}")
    inp = graph_inputs[0]
    in_shape = tuple(shapes.get(inp.name, [])[1:])
    if not in_shape or any(d is None for d in in_shape):
        raise LegrError(f"input {inp.name!r} needs static non-batch dims, got {in_shape}")
    groups = _Groups()
    tg: Dict[str, int] = {inp.name: groups.new(int(in_shape[0]))}
    fixed_seeds = {tg[inp.name]}
    layers: List[LayerSpec] = []
    for node in model.graph.node:
        _propagate(node, tg, groups, inits, shapes, layers)
    for out in model.graph.output:
        if out.name in tg:
            fixed_seeds.add(tg[out.name])
    roots = {groups.find(g) for g in range(len(groups.parent))}
    fixed = {r: any(groups.find(s) == r for s in fixed_seeds) for r in roots}
    size = {r: groups.size[r] for r in roots}
    layers = [dataclasses.replace(l, in_group=groups.find(l.in_group), out_group=groups.find(l.out_group))
              for l in layers]
    tg = {k: groups.find(v) for k, v in tg.items()}
    if not layers:
        raise LegrError("no Conv or Gemm layers found")
    return DenseGraph(model, layers, size, fixed, tg, inp.name, tuple(int(d) for d in in_shape))


def _propagate(node, tg, groups: _Groups, inits, shapes, layers: List[LayerSpec]) -> None:
    grouped = [x for x in node.input if x in tg]
    if node.op_type == "Conv":
        layers.append(_conv_layer(node, tg, groups, inits, shapes))
    elif node.op_type == "Gemm":
        layers.append(_gemm_layer(node, tg, groups, inits))
    elif node.op_type in MERGING and grouped:
        g = tg[grouped[0]]
        for other in grouped[1:]:
            g = groups.union(g, tg[other])
        tg[node.output[0]] = g
    elif node.op_type in PASS_THROUGH and grouped:
        tg[node.output[0]] = tg[node.input[0]]
    elif grouped:
        raise LegrError(f"node {node.name or node.op_type!r} ({node.op_type}) on a channel tensor is not "
                        f"supported by the latency table's graph analysis")


def _weight(inits, name: str, node) -> np.ndarray:
    if name not in inits:
        raise LegrError(f"{node.op_type} {node.name!r}: weight {name!r} is not an initializer")
    return numpy_helper.to_array(inits[name])


def _layer_name(weight_name: str) -> str:
    weight_name = weight_name.split("__pruned")[0]  # see pruned()
    return weight_name[:-len(".weight")] if weight_name.endswith(".weight") else weight_name


def _conv_layer(node, tg, groups: _Groups, inits, shapes) -> LayerSpec:
    w = _weight(inits, node.input[1], node)
    x = node.input[0]
    if x not in tg:
        raise LegrError(f"Conv {node.name!r}: input {x!r} is not traced from the graph input")
    in_shape = shapes.get(x)
    out_shape = shapes.get(node.output[0])
    if not in_shape or len(in_shape) != 4 or None in in_shape[1:] or not out_shape or None in out_shape[1:]:
        raise LegrError(f"Conv {node.name!r}: shape inference gave no static shape for {x!r}")
    g = int(_attr(node, "group", 1))
    cout, cin = int(w.shape[0]), int(w.shape[1]) * g
    pads = tuple(int(p) for p in _attr(node, "pads", [0, 0, 0, 0]))
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise LegrError(f"Conv {node.name!r}: auto_pad is not supported; export with explicit pads")
    layer = LayerSpec(
        name=_layer_name(node.input[1]), op="conv", cin=cin, cout=cout,
        kernel=(int(w.shape[2]), int(w.shape[3])),
        strides=tuple(int(s) for s in _attr(node, "strides", [1, 1])),
        pads=pads, dilations=tuple(int(d) for d in _attr(node, "dilations", [1, 1])), groups=g,
        hw=(int(in_shape[2]), int(in_shape[3])), out_hw=(int(out_shape[2]), int(out_shape[3])),
        in_group=tg[x])
    if g > 1 and not layer.depthwise:
        raise LegrError(f"Conv {node.name!r}: grouped (not depthwise) convolutions are not supported")
    out_group = tg[x] if layer.depthwise else groups.new(cout)
    tg[node.output[0]] = out_group
    return dataclasses.replace(layer, out_group=out_group)


def _gemm_layer(node, tg, groups: _Groups, inits) -> LayerSpec:
    w = _weight(inits, node.input[1], node)
    x = node.input[0]
    if x not in tg or int(_attr(node, "transA", 0)):
        raise LegrError(f"Gemm {node.name!r}: expects an untransposed traced input")
    cout, cin = (w.shape if int(_attr(node, "transB", 0)) else w.shape[::-1])
    out_group = groups.new(int(cout))
    tg[node.output[0]] = out_group
    return LayerSpec(name=_layer_name(node.input[1]), op="linear", cin=int(cin), cout=int(cout),
                     in_group=tg[x], out_group=out_group)


# ----- single-layer graphs ------------------------------------------------------------------
def single_layer(layer: LayerSpec, cin: int, cout: int, opset: int, copies: int = 1,
                 seed: int = 0) -> onnx.ModelProto:
    """``copies`` parallel Convs (with bias, as after BatchNorm folding) or Gemms at the given
    channel counts, on one input, summed when more than one.

    Timing one copy and two copies and taking the difference gives the layer's marginal
    cost inside a network: the per-graph costs (session call, layout reorders at the
    graph's ends) cancel, and the Add stands for the element-wise op that follows most
    layers in a network.
    """
    rng = np.random.default_rng(seed)
    g = 1
    if layer.op == "linear":
        w_shape, x_shape, y_shape = (cout, cin), ["batch", cin], ["batch", cout]
    else:
        if layer.depthwise:
            cout = g = cin
        w_shape = (cout, cin // g, *layer.kernel)
        x_shape, y_shape = ["batch", cin, *layer.hw], ["batch", cout, *layer.out_hw]
    nodes, inits = [], []
    for i in range(copies):
        w, b, y = f"w{i}", f"b{i}", ("y" if copies == 1 else f"y{i}")
        inits += [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32) * 0.1, w),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, b)]
        if layer.op == "linear":
            nodes.append(helper.make_node("Gemm", ["x", w, b], [y], transB=1))
        else:
            nodes.append(helper.make_node("Conv", ["x", w, b], [y], group=g, pads=list(layer.pads),
                                          strides=list(layer.strides), dilations=list(layer.dilations),
                                          kernel_shape=list(layer.kernel)))
    for i in range(1, copies):  # Add, not Sum: runtimes fuse Conv + Add as in residual blocks
        acc = "y0" if i == 1 else f"s{i - 1}"
        nodes.append(helper.make_node("Add", [acc, f"y{i}"], ["y" if i == copies - 1 else f"s{i}"]))
    graph = helper.make_graph(
        nodes, "latency_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


# ----- pruned whole networks ---------------------------------------------------------------
def pruned(dense: DenseGraph, widths: Dict[int, int]) -> onnx.ModelProto:
    """The dense graph with each group ``g`` cut to its first ``widths[g]`` channels.

    Weight values do not matter for latency; slicing keeps the graph valid. Every sliced
    parameter becomes a new initializer of its own node (exporters share identical
    initializers, e.g. zero biases behind Identity nodes); what is left unused is dropped.
    """
    model = onnx.ModelProto()
    model.CopyFrom(dense.model)
    del model.graph.value_info[:]
    keep = {g: widths.get(g, size) for g, size in dense.group_size.items()}
    arrays = _constant_arrays(model)
    new_inits: List[onnx.TensorProto] = []
    for i, node in enumerate(model.graph.node):
        for pos, array in _sliced_inputs(node, dense, keep, arrays).items():
            name = f"{node.input[pos]}__pruned{i}"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            node.input[pos] = name
    model.graph.initializer.extend(new_inits)
    _drop_unused(model)
    return model


def _constant_arrays(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """Initializers, and Identity outputs of initializers, by tensor name."""
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    return arrays


def _sliced_inputs(node, dense: DenseGraph, keep: Dict[int, int], arrays) -> Dict[int, np.ndarray]:
    """Input position -> sliced parameter array, for the parameters this node's widths change."""
    tg = dense.tensor_group
    out: Dict[int, np.ndarray] = {}
    if node.op_type in ("Conv", "Gemm") and node.input[0] in tg:
        w = arrays[node.input[1]]
        cin, cout = keep[tg[node.input[0]]], keep[tg[node.output[0]]]
        if node.op_type == "Conv":
            if int(_attr(node, "group", 1)) > 1:  # depthwise: groups follow the channels
                for a in node.attribute:
                    if a.name == "group":
                        a.i = cin
                out[1] = w[:cout]
            else:
                out[1] = w[:cout, :cin]
        else:
            out[1] = w[:cout, :cin] if int(_attr(node, "transB", 0)) else w[:cin, :cout]
        if len(node.input) > 2 and node.input[2] in arrays:
            out[2] = arrays[node.input[2]][:cout]
    elif node.op_type in PER_CHANNEL_INPUTS and node.input[0] in tg:
        c = keep[tg[node.input[0]]]
        for i in PER_CHANNEL_INPUTS[node.op_type]:
            if i < len(node.input) and node.input[i] in arrays:
                out[i] = arrays[node.input[i]][:c]
    elif node.op_type == "Reshape" and node.input[0] in tg and node.input[1] in arrays:
        shape = arrays[node.input[1]].copy()
        g = tg[node.input[0]]
        if shape.ndim == 1 and len(shape) >= 2 and shape[1] == dense.group_size[g]:
            shape[1] = keep[g]
            out[1] = shape
    return out


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove Identity nodes and initializers nothing reads any more."""
    while True:
        used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type == "Identity" and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {x for n in model.graph.node for x in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def layer_widths(model: onnx.ModelProto) -> Dict[str, Tuple[int, int]]:
    """(cin, cout) of every Conv/Gemm of a (pruned) exported model, by layer name."""
    inits = {i.name: i for i in model.graph.initializer}
    out: Dict[str, Tuple[int, int]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits:
            continue
        shape = list(inits[node.input[1]].dims)
        if node.op_type == "Conv":
            out[_layer_name(node.input[1])] = (int(shape[1]) * int(_attr(node, "group", 1)), int(shape[0]))
        else:
            tb = int(_attr(node, "transB", 0))
            out[_layer_name(node.input[1])] = (int(shape[1]), int(shape[0])) if tb else (int(shape[0]), int(shape[1]))
    return out
