"""Filter importance: base scores, per-layer normalisation, and the per-group reduction.

Every scored conv filter ``i`` of layer ``l`` starts from ``s_i = ||theta_i||_2^2``.
LeGR learns an affine transform per layer, ``I_i = alpha_l * z_i + kappa_l``, where
``z`` is the base score after a per-layer normalisation, and a coupled channel (one
global channel index shared by several convs: a residual chain, a depthwise conv and
its producer) gets one score from its members' transformed scores.

Two ways of doing this, both kept so the difference stays measurable
(``benchmarks/ranking_quality.py``):

- ``paper``: ``z = s`` (raw squared norms) and a group SUMS its members. Raw norms sit
  near their initialisation scale (about ``2 * C_in / C_out``), so layers are not
  comparable, and a residual chain of 7 convs outscores every inner conv.
- the product's default: ``z`` normalised per layer and a group takes the MEAN of its
  members, so that the identity transform already allocates sensibly across layers.
  Normalisations (all invariant to scaling a layer's weights by a positive factor):
  ``zscore`` ``(s - mean_l) / std_l``; ``mean`` ``s / mean_l``; ``lamp`` (Lee et al.
  2021, per filter) ``s_i / sum_{s_j >= s_i} s_j``. ``zscore`` is the default: with it the identity
  transform cuts every layer at about the same quantile (close to uniform pruning), alpha
  then only sets how sharply a layer is cut and kappa where, and the paper's raw-L2
  ranking is still one exact point of the search space (``paper_transform``). The
  measurement behind the choice is in benchmarks/RESULTS.md ("score normalisation").

What ``s_i`` measures (``source``): ``filter`` is the paper's, the filter's own squared
norm. ``coupled`` (the product's default) is the magnitude of everything the filter's
channel touches (:func:`coupled_channel_scores`): a filter the next layer barely reads
scores low however large its own norm. Measured on shapes/ResNet-20 (RESULTS.md,
"ranking_quality (full, eighth session)"), this choice of filters INSIDE a group is where
Torch-Pruning's magnitude pruner beat the own-norm score, by about 3 points at 0.2 of the
MACs. Under ``coupled`` every member of a channel shares one base score, so a group's
mean is that score normalised per layer, and the paper's raw-L2 ranking is no longer a
point of the search space (``paper_transform`` then gives the paper's group SUM of the
coupled magnitudes).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from legr_edge.errors import LegrError
from legr_edge.prune.coupling import Coupling

NORMALISATIONS = ("zscore", "mean", "lamp", "none")
REDUCTIONS = ("mean", "sum")
SOURCES = ("filter", "coupled")


@dataclasses.dataclass(frozen=True)
class LayerScores:
    """Base filter scores laid out for fast transformed-score computation."""

    layer_names: tuple[str, ...]
    entry_layer: np.ndarray    # layer index of each (layer, filter) entry
    entry_score: np.ndarray    # raw s_i of that filter
    entry_norm: np.ndarray     # z_i: s_i after the per-layer normalisation
    entry_chan: np.ndarray     # global channel the filter belongs to
    sigma: np.ndarray          # per-layer std of z (the unit of kappa)
    num_channels: int
    norm: str = "zscore"
    reduce: str = "mean"
    source: str = "filter"

    @property
    def members_per_channel(self) -> np.ndarray:
        return np.bincount(self.entry_chan, minlength=self.num_channels)

    def transformed(self, alpha: np.ndarray, kappa: np.ndarray) -> np.ndarray:
        """Global channel scores under per-layer ``alpha``/``kappa``.

        A channel no scored conv produces (rare: only a parameter member) scores 0.
        """
        values = alpha[self.entry_layer] * self.entry_norm + kappa[self.entry_layer]
        total = np.bincount(self.entry_chan, weights=values, minlength=self.num_channels)
        if self.reduce == "sum":
            return total
        return total / np.maximum(self.members_per_channel, 1)

    def identity(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.layer_names)
        return np.ones(n), np.zeros(n)


def base_scores(model: nn.Module, coupling: Coupling, norm: str = "zscore",
                reduce: str = "mean", source: str = "filter") -> LayerScores:
    """Every scored conv filter's base score, normalised, mapped to its global channel:
    its squared L2 norm (``source="filter"``, the paper's), or the magnitude of everything
    its channel is coupled with (``"coupled"``, see :func:`coupled_channel_scores`)."""
    if norm not in NORMALISATIONS:
        raise LegrError(f"score normalisation must be one of {', '.join(NORMALISATIONS)}, got {norm!r}")
    if reduce not in REDUCTIONS:
        raise LegrError(f"group reduction must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if source not in SOURCES:
        raise LegrError(f"score source must be one of {', '.join(SOURCES)}, got {source!r}")
    modules = dict(model.named_modules())
    out_members = {m.name: m for m in coupling.members() if m.is_out}
    coupled = coupled_channel_scores(model, coupling) if source == "coupled" else None
    layer_ids, raw, normed, chans, sigma = [], [], [], [], []
    for li, name in enumerate(coupling.scored_layers):
        member = out_members[name]
        if coupled is None:
            weight = modules[name].weight.detach().float().cpu()
            s = weight.pow(2).flatten(1).sum(1).double().numpy()[member.idxs]
        else:
            s = coupled[member.roots]
        z = normalise(s, norm)
        layer_ids.append(np.full(len(s), li))
        raw.append(s)
        normed.append(z)
        chans.append(member.roots)
        sigma.append(float(np.std(z)) if len(z) > 1 else 0.0)
    return LayerScores(
        layer_names=coupling.scored_layers, entry_layer=np.concatenate(layer_ids),
        entry_score=np.concatenate(raw), entry_norm=np.concatenate(normed),
        entry_chan=np.concatenate(chans), sigma=np.asarray(sigma), num_channels=coupling.num_channels,
        norm=norm, reduce=reduce, source=source)


def coupled_channel_scores(model: nn.Module, coupling: Coupling) -> np.ndarray:
    """Per global channel: the mean over every module the channel is coupled with of that
    module's squared weight magnitude for the channel, each module's values divided by
    their mean over its channels (so no layer's scale dominates, and scaling a layer's
    weights changes nothing). A channel's modules: the convs that write it (their output
    filters), its BatchNorm scales, and the convs and linears that READ it (their input
    slices, ``W[:, c]``): a filter whose output the next layer barely uses scores low even
    when its own norm is large. Torch-Pruning's group magnitude importance looks at the
    same parameters. Grouped convs' input side is left out (their output side covers it)."""
    modules = dict(model.named_modules())
    total = np.zeros(coupling.num_channels)
    count = np.zeros(coupling.num_channels)
    for m in coupling.members():
        mod = modules.get(m.name)
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor) or len(m.idxs) == 0:
            continue
        w = weight.detach().double().cpu()
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if not m.is_out and getattr(mod, "groups", 1) != 1:
                continue
            part = w[m.idxs] if m.is_out else w[:, m.idxs].transpose(0, 1)
            v = part.reshape(len(m.idxs), -1).pow(2).sum(1).numpy()
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            v = w[m.idxs].pow(2).numpy()
        else:
            continue
        mean = float(v.mean())
        if not mean > 0:
            continue
        np.add.at(total, m.roots, v / mean)
        np.add.at(count, m.roots, 1.0)
    return total / np.maximum(count, 1.0)


def normalise(s: np.ndarray, norm: str) -> np.ndarray:
    """One layer's base scores under ``norm`` (see the module docstring)."""
    if norm == "none" or len(s) == 0:
        return s.copy()
    if norm == "mean":
        return s / max(float(s.mean()), 1e-30)
    if norm == "zscore":
        std = float(s.std())
        return (s - s.mean()) / std if std > 0 else np.zeros_like(s)
    # lamp: each filter's score over the total score of the filters at least as large
    order = np.argsort(s, kind="stable")
    tail = np.cumsum(s[order][::-1])[::-1]          # sum over filters ranked at or above
    out = np.empty_like(s)
    out[order] = s[order] / np.maximum(tail, 1e-30)
    return out


def paper_transform(scores: LayerScores) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, kappa) that reproduce the paper's rule on these base scores (raw, group SUM):
    on ``source="filter"`` the paper's raw-L2 ranking, on ``"coupled"`` the group sum of
    the coupled magnitudes.

    Exact for the linear normalisations (``zscore``, ``mean``, ``none``) wherever every
    channel of a group has the same number of scored members (true for residual chains
    and depthwise pairs; concat groups come out as the mean instead of the sum). Under
    ``zscore``, ``s = mu + sd * z``, so ``alpha = n * sd`` and ``kappa = n * mu`` with
    ``n`` the members of the layer's channels; a SUM over members divided by ``n`` is
    the MEAN the product takes.
    """
    if scores.norm == "lamp":
        raise LegrError("the paper's ranking is not an affine transform of LAMP scores")
    n_layers = len(scores.layer_names)
    alpha, kappa = np.ones(n_layers), np.zeros(n_layers)
    members = scores.members_per_channel
    for l in range(n_layers):
        sel = scores.entry_layer == l
        s = scores.entry_score[sel]
        n = float(np.max(members[scores.entry_chan[sel]])) if scores.reduce == "mean" else 1.0
        if scores.norm == "zscore":
            sd, mu = float(s.std()), float(s.mean())
            alpha[l], kappa[l] = n * sd, n * mu
            if sd == 0:
                alpha[l] = 0.0
        elif scores.norm == "mean":
            alpha[l] = n * float(s.mean())
        else:
            alpha[l] = n
    return alpha, kappa


def uniform_transform(scores: LayerScores, coupling: Coupling, counts: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(alpha=1, kappa) whose ranking keeps ``counts[g]`` channels of every group at one
    common threshold (0): each group's identity scores are shifted so that the gap
    between its ``counts[g]``-th and next channel straddles 0.

    With ``counts`` from uniform pruning at the search target, this member reproduces
    uniform pruning there. A group's shift is applied as the kappa of every scored layer
    feeding it (a group's score is the mean of its members, so it moves by exactly
    that kappa); layers feeding several groups (concat inputs) take the mean shift.
    """
    if scores.reduce != "mean":
        raise LegrError("the uniform seed needs group scores reduced by the mean")
    base = scores.transformed(*scores.identity())
    shift = np.zeros(len(coupling.groups))
    spread = float(np.ptp(base)) + 1.0
    for g, group in enumerate(coupling.groups):
        v = np.sort(base[group.offset:group.offset + group.size])[::-1]
        k = int(counts[g])
        if k >= group.size:
            shift[g] = spread - v[-1]          # every channel above 0
        elif k <= 0:
            shift[g] = -spread - v[0]          # every channel below 0
        else:
            shift[g] = -(v[k - 1] + v[k]) / 2.0
    group_of = coupling.group_of_channel
    kappa = np.zeros(len(scores.layer_names))
    for l in range(len(scores.layer_names)):
        groups = group_of[scores.entry_chan[scores.entry_layer == l]]
        kappa[l] = float(np.mean(shift[groups]))
    return np.ones(len(scores.layer_names)), kappa


def uniform_scores(raw: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Scores under which a threshold keeps the same fraction of every group.

    ``1 - (within-group rank of the raw score + 0.5) / group size``: threshold ``t`` keeps
    ``round(size * (1 - t))`` channels of each group, its best by ``raw``.
    """
    ranks = within_group_ranks(raw, group)
    sizes = np.bincount(group)[group]
    return 1.0 - (ranks + 0.5) / sizes


def within_group_ranks(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Rank of each channel inside its group, 0 = highest score (ties by index)."""
    order = np.lexsort((np.arange(len(scores)), -scores, group))
    ranks = np.empty(len(scores), dtype=np.int64)
    starts = np.searchsorted(group[order], group[order], side="left")
    ranks[order] = np.arange(len(scores)) - starts
    return ranks

