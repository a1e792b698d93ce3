"""Pruned architectures as data: ``arch.json`` + a plain ``weights.pt`` state_dict.

A pruned network is rebuilt by creating the dense network from its factory and then
resizing every module whose shape the pruning changed, as recorded in arch.json. The
weights are then loaded with ``torch.load(..., weights_only=True)``: no pickled modules,
ever. This works for any network whose forward pass reads channel counts from its
tensors (everything Torch-Pruning can prune).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from legr_edge import io
from legr_edge.errors import LegrError
from legr_edge.models.registry import create_model

log = logging.getLogger(__name__)

ARCH_FORMAT = "legr_edge.arch/1"
WEIGHTS = "weights.pt"
ARCH = "arch.json"

# Shape attributes per module type; the tensors are resized from the recorded shapes.
_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm1d: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.PReLU: ("num_parameters",),
}


def describe(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shape attributes and tensor shapes of every module that owns tensors."""
    spec = {}
    for name, mod in model.named_modules():
        tensors = {k: list(v.shape) for k, v in _own_tensors(mod)}
        if not tensors:
            continue
        attrs = {a: getattr(mod, a) for a in _ATTRS.get(type(mod), ())}
        spec[name] = {"type": type(mod).__name__, "attrs": attrs, "shapes": tensors}
    return spec


def save_model(model: nn.Module, model_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``arch.json`` (``meta`` + module shapes) and ``weights.pt`` atomically."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    arch = {"format": ARCH_FORMAT, **meta, "modules": describe(model)}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with io.atomic_path(model_dir / WEIGHTS) as tmp:
        torch.save(state, tmp)
    io.write_json(model_dir / ARCH, arch)


def read_arch(model_dir: str | os.PathLike) -> dict[str, Any]:
    """arch.json of a saved model, checked as data (it is never executed)."""
    from legr_edge.rundir import read_json_object

    path = Path(model_dir) / ARCH
    if not path.is_file():
        raise LegrError(f"{path}: no such file (not a legr_edge model directory)")
    arch = read_json_object(path, "architecture of a saved model")
    if arch.get("format") != ARCH_FORMAT:
        raise LegrError(f"{path}: format {arch.get('format')!r}, expected {ARCH_FORMAT!r}")
    for key in ("num_classes", "in_chans"):
        v = arch.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 100000):
            raise LegrError(f"{path}: {key} must be a positive integer, got {v!r}")
    if not isinstance(arch.get("modules"), dict) or not isinstance(arch.get("model"), str):
        raise LegrError(f"{path}: needs 'model' (a name) and 'modules' (an object of layers)")
    arch["_source"] = str(path)
    return arch


def build_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Create the dense network named in ``arch`` and resize it to the recorded shapes.

    A user factory named in arch.json runs only if trusted (legr_edge.models.registry);
    pruning only ever shrinks a layer, so no recorded size may exceed the dense one.
    """
    source = arch.get("_source", ARCH)
    model = create_model(arch["model"], arch.get("num_classes"), arch.get("in_chans"), source=source)
    modules = dict(model.named_modules())
    for name, entry in arch["modules"].items():
        if name not in modules:
            raise LegrError(f"{source}: names module {name!r} that model {arch['model']!r} does not have")
        _check_entry(modules[name], name, entry, source)
        _resize(modules[name], entry)
    return model


def _check_entry(mod: nn.Module, name: str, entry: Any, source: str) -> None:
    """Only known shape attributes, as integers no larger than the dense module's."""
    if not isinstance(entry, dict):
        raise LegrError(f"{source}: modules[{name!r}] must be an object")
    allowed = _ATTRS.get(type(mod), ())
    for attr, value in (entry.get("attrs") or {}).items():
        if attr not in allowed or not isinstance(value, int) or isinstance(value, bool) or not (
                1 <= value <= getattr(mod, attr)):
            raise LegrError(f"{source}: modules[{name!r}].attrs.{attr} = {value!r} is not a size "
                            f"this {type(mod).__name__} may shrink to")
    for key, shape in (entry.get("shapes") or {}).items():
        tensor = getattr(mod, key, None)
        if tensor is None:
            continue
        if (not isinstance(shape, list) or len(shape) != tensor.dim() or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= o
                for d, o in zip(shape, tensor.shape))):
            raise LegrError(f"{source}: modules[{name!r}].shapes.{key} = {shape!r} does not fit "
                            f"the dense shape {list(tensor.shape)}")


def load_model(model_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network saved in ``model_dir`` and load its weights (eval mode)."""
    model = build_from_arch(read_arch(model_dir))
    load_weights(model, Path(model_dir) / WEIGHTS, map_location)
    return model.to(map_location).eval()  # load_state_dict copies into the (CPU) parameters


def load_weights(model: nn.Module, path: str | os.PathLike, map_location="cpu") -> None:
    """Load a plain state_dict (or {'state_dict'|'model': ...}) safely into ``model``."""
    state = read_state_dict(path, map_location)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:4])
        raise LegrError(f"{path}: checkpoint does not fit the model: {detail}") from e


def read_state_dict(path: str | os.PathLike, map_location="cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise LegrError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or a pickle with code in it
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LegrError(f"{path}: not a loadable weights file (plain state_dict expected): {msg}") from e
    if isinstance(obj, dict) and not _is_state_dict(obj):
        obj = obj.get("state_dict", obj.get("model", obj))
    if not _is_state_dict(obj):
        raise LegrError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    bad = next((k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise LegrError(f"{path}: tensor {bad!r} holds NaN or inf; refusing a broken checkpoint")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _own_tensors(mod: nn.Module):
    yield from mod.named_parameters(recurse=False)
    yield from ((k, v) for k, v in mod.named_buffers(recurse=False) if v is not None and v.dim() > 0)


def _resize(mod: nn.Module, entry: dict[str, Any]) -> None:
    for attr, value in entry.get("attrs", {}).items():
        setattr(mod, attr, value)
    for key, shape in entry.get("shapes", {}).items():
        tensor = getattr(mod, key, None)
        if tensor is None or list(tensor.shape) == list(shape):
            continue
        new = torch.empty(shape, dtype=tensor.dtype)
        if isinstance(tensor, nn.Parameter):
            setattr(mod, key, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            mod.register_buffer(key, new)
