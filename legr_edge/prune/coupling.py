"""Which filters must be removed together, read from the model's own graph.

Torch-Pruning's DependencyGraph traces the network once; every group it returns is a
set of channels that can only be removed together (a residual chain, a depthwise conv
and the conv feeding it, the inputs of a concat...). We flatten the groups into one
global channel index space: group ``g`` owns channels ``offset[g] .. offset[g]+size[g]``.
Every other module in legr_edge (cost, ranking, surgery) works on boolean masks over
that space and never touches Torch-Pruning again.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from legr_edge.errors import LegrError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Member:
    """One module (or parameter) touched when channels of a group are removed."""

    name: str            # dotted name in the model
    is_out: bool         # output channels (True) or input channels (False) of ``name``
    idxs: np.ndarray     # channel indices within the module
    roots: np.ndarray    # global channel index of each entry of ``idxs``
    handler: object      # Torch-Pruning's pruning function for this module and dimension


@dataclasses.dataclass(frozen=True)
class Group:
    root: str
    offset: int
    size: int
    members: tuple[Member, ...]


@dataclasses.dataclass(frozen=True)
class Coupling:
    """The channel groups of a model, plus the layers whose filters are scored."""

    groups: tuple[Group, ...]
    scored_layers: tuple[str, ...]   # conv layers whose output filters get an alpha/kappa

    @property
    def num_channels(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def group_of_channel(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.groups)), [g.size for g in self.groups])

    def members(self):
        for g in self.groups:
            yield from g.members


def stream_groups(coupling: Coupling, model: nn.Module) -> np.ndarray:
    """Which groups are residual streams: every channel written by two or more convs (a
    residual addition ties their outputs). Depthwise convs only pass a group's channels
    through, and the inputs of a concat each write only part of it: neither counts. A
    stream channel is input to every block along it, so it costs several times the MACs
    of a block's inner channel."""
    modules = dict(model.named_modules())

    def writes_all(m: Member, size: int) -> bool:
        conv = modules.get(m.name)
        return (m.is_out and isinstance(conv, nn.Conv2d) and len(np.unique(m.roots)) == size
                and not (conv.groups > 1 and conv.groups == conv.in_channels))

    return np.array([sum(writes_all(m, g.size) for m in g.members) >= 2 for g in coupling.groups], dtype=bool)


def build_coupling(model: nn.Module, example_input: torch.Tensor,
                   ignored: list[str] | tuple[str, ...] = ()) -> Coupling:
    """Trace ``model`` and return its prunable channel groups.

    The last conv/linear layer in execution order (the classifier) and the layers named
    in ``ignored`` keep all their output channels.
    """
    names = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    skip = _resolve_ignored(model, example_input, ignored)
    model = model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as e:  # tracing a user's model can fail in many ways
        raise LegrError(f"cannot trace the model's graph for pruning: {type(e).__name__}: {e}") from e
    groups, offset = [], 0
    ignored_modules = [m for m, n in names.items() if n in skip]
    for tp_group in graph.get_all_groups(ignored_layers=ignored_modules, root_module_types=[nn.Conv2d]):
        group = _convert_group(tp_group, graph, names, params, offset)
        if group is not None:
            groups.append(group)
            offset += group.size
    modules = dict(model.named_modules())
    scored = tuple(m.name for g in groups for m in g.members
                   if m.is_out and isinstance(modules.get(m.name), nn.Conv2d))
    if not groups:
        raise LegrError("the model has no prunable convolution channels")
    log.debug("coupling: %d groups, %d channels, %d scored layers", len(groups), offset, len(scored))
    return Coupling(tuple(groups), scored)


def _convert_group(tp_group, graph, names, params, offset: int) -> Group | None:
    root_module = tp_group[0].dep.target.module
    size = len(tp_group[0].idxs)
    members = []
    for item in tp_group:
        target = item.dep.target.module
        name = names.get(target) if isinstance(target, nn.Module) else params.get(target)
        if name is None:  # an operation node (add, concat, reshape): nothing to cut
            continue
        members.append(Member(
            name=name,
            is_out=graph.is_out_channel_pruning_fn(item.dep.handler),
            idxs=np.asarray(item.idxs, dtype=np.int64),
            roots=offset + np.asarray(item.root_idxs, dtype=np.int64),
            handler=item.dep.handler,
        ))
    if size < 2:
        return None
    return Group(root=names[root_module], offset=offset, size=size, members=tuple(members))


def _resolve_ignored(model: nn.Module, example_input: torch.Tensor, ignored) -> set[str]:
    known = {n for n, _ in model.named_modules()}
    unknown = [n for n in ignored if n not in known]
    if unknown:
        raise LegrError(f"--ignore-layers names unknown modules: {', '.join(unknown)}")
    order = execution_order(model, example_input, (nn.Conv2d, nn.Linear))
    return set(ignored) | ({order[-1]} if order else set())


def execution_order(model: nn.Module, example_input: torch.Tensor, types) -> list[str]:
    """Names of the modules of ``types`` in the order a forward pass calls them."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    return order

