"""Physically remove channels: a keep-mask over the global channel space in, a
smaller network out.

The pruning functions recorded with each group member (Torch-Pruning's public
per-layer pruners) are applied once per module and dimension, with all removed
indices at once, so indices never shift under our feet (concat inputs included).
"""
from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch.nn as nn

from legr_edge.prune.coupling import Coupling


def prune_model(model: nn.Module, coupling: Coupling, keep: np.ndarray) -> nn.Module:
    """Return a pruned deep copy of ``model`` keeping the channels where ``keep`` is True."""
    pruned = copy.deepcopy(model)
    removals: dict[tuple[str, object], set[int]] = defaultdict(set)
    for member in coupling.members():
        drop = member.idxs[~keep[member.roots]]
        if len(drop):
            removals[(member.name, member.handler)].update(int(i) for i in drop)
    modules = dict(pruned.named_modules())
    for (name, handler), idxs in removals.items():
        if name in modules:
            handler(modules[name], sorted(idxs))
        else:
            _prune_parameter(pruned, name, handler, sorted(idxs))
    return pruned


def _prune_parameter(model: nn.Module, name: str, handler, idxs: list[int]) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, handler(getattr(owner, attr), idxs))


def zero_removed(model: nn.Module, coupling: Coupling, keep: np.ndarray) -> nn.Module:
    """A deep copy of ``model`` in which the removed channels output exactly zero.

    Zeroes the removed output filters of every conv/linear member and the affine
    parameters of every norm layer on them. Used to check that surgery keeps the
    function of the masked network.
    """
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for m in coupling.members():
        mod = modules.get(m.name)
        drop = m.idxs[~keep[m.roots]]
        if mod is None or not m.is_out or not len(drop):
            continue
        for p in (getattr(mod, "weight", None), getattr(mod, "bias", None)):
            if p is not None:
                p.data[drop] = 0
    return masked
