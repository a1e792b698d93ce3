"""Analytic multiply-accumulates (MACs) of a network from its kept channels.

The rule (LeGR's "FLOPs", batch 1): per conv ``H_out*W_out*C_out*(C_in/groups)*k_h*k_w``,
per linear ``in*out`` (times the positions it is applied at); BatchNorm, activations,
pooling, adds and biases are not counted. FLOPs = 2 * MACs.

A forward pass of the dense network records each layer's spatial factor once; after
that, the MACs of any keep-mask are a few vectorised numpy operations, fast enough to
run inside the binary search for every candidate of the evolution.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from legr_edge.prune.coupling import Coupling


@dataclasses.dataclass(frozen=True)
class CostModel:
    names: tuple[str, ...]
    coef: np.ndarray          # spatial factor per layer: H_out*W_out*k_h*k_w (conv), positions (linear)
    groups: np.ndarray        # conv groups (1 for linear)
    depthwise: np.ndarray     # bool: C_in/groups stays 1 whatever is kept
    out_fixed: np.ndarray     # channels not owned by any prunable group
    in_fixed: np.ndarray
    out_layer: np.ndarray     # (layer index, global channel) pairs: each kept channel adds 1
    out_chan: np.ndarray
    in_layer: np.ndarray
    in_chan: np.ndarray

    def counts(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output and input channel counts of every layer under ``keep`` (bool per channel)."""
        n = len(self.names)
        k = keep.astype(np.float64)
        out = self.out_fixed + np.bincount(self.out_layer, weights=k[self.out_chan], minlength=n)
        inp = self.in_fixed + np.bincount(self.in_layer, weights=k[self.in_chan], minlength=n)
        return out, inp

    def macs(self, keep: np.ndarray) -> int:
        out, inp = self.counts(keep)
        per_in = np.where(self.depthwise, 1.0, inp / self.groups)
        return int(round(float(np.sum(self.coef * out * per_in))))

    def dense_macs(self, num_channels: int) -> int:
        return self.macs(np.ones(num_channels, dtype=bool))


def build_cost_model(model: nn.Module, example_input: torch.Tensor, coupling: Coupling) -> CostModel:
    """Record each conv/linear layer's spatial factor and map it onto the channel groups."""
    layers = _trace_layers(model, example_input)
    index = {name: i for i, name in enumerate(layers)}
    out_pairs, in_pairs = ([], []), ([], [])
    for m in coupling.members():
        if m.name in index:
            pairs = out_pairs if m.is_out else in_pairs
            pairs[0].append(np.full(len(m.roots), index[m.name]))
            pairs[1].append(m.roots)
    out_layer, out_chan = (np.concatenate(p) if p else np.zeros(0, np.int64) for p in out_pairs)
    in_layer, in_chan = (np.concatenate(p) if p else np.zeros(0, np.int64) for p in in_pairs)
    n = len(layers)
    info = list(layers.values())
    full_out = np.array([i["out"] for i in info], dtype=np.float64)
    full_in = np.array([i["in"] for i in info], dtype=np.float64)
    return CostModel(
        names=tuple(layers), coef=np.array([i["coef"] for i in info], dtype=np.float64),
        groups=np.array([i["groups"] for i in info], dtype=np.float64),
        depthwise=np.array([i["depthwise"] for i in info], dtype=bool),
        out_fixed=full_out - np.bincount(out_layer, minlength=n),
        in_fixed=full_in - np.bincount(in_layer, minlength=n),
        out_layer=out_layer, out_chan=out_chan, in_layer=in_layer, in_chan=in_chan,
    )


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of a concrete (e.g. physically pruned) network by the same rule."""
    layers = _trace_layers(model, example_input)
    return int(sum(i["coef"] * i["out"] * (1 if i["depthwise"] else i["in"] / i["groups"])
                   for i in layers.values()))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _trace_layers(model: nn.Module, example_input: torch.Tensor) -> dict[str, dict]:
    """One batch-1 forward pass; per conv/linear layer: spatial factor and channel counts."""
    layers: dict[str, dict] = {}

    def hook(name):
        def record(mod, inputs, output):
            if name not in layers:  # a module reused in forward counts at each call; rare in CNNs
                layers[name] = _layer_info(mod, output)
            else:
                layers[name]["coef"] += _layer_info(mod, output)["coef"]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example_input[:1])
    finally:
        for h in handles:
            h.remove()
    return layers


def _layer_info(mod: nn.Module, output: torch.Tensor) -> dict:
    if isinstance(mod, nn.Conv2d):
        kh, kw = mod.kernel_size
        dw = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
        return {"coef": float(output.shape[-2] * output.shape[-1] * kh * kw), "out": mod.out_channels,
                "in": mod.in_channels, "groups": mod.groups, "depthwise": dw}
    positions = output.numel() // output.shape[-1]
    return {"coef": float(positions), "out": mod.out_features, "in": mod.in_features,
            "groups": 1, "depthwise": False}
