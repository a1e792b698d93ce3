"""Latency as the Pruner's cost: the device's latency table behind the CostModel interface.

:class:`LatencyCostModel` answers ``macs(keep)`` and ``dense_macs(n)`` like
:class:`legr_edge.prune.cost.CostModel`, but in predicted milliseconds: each layer's
kept (input, output) channel counts are looked up in the table (interpolated once into
a per-layer array at construction, so a prediction is one gather and a sum), and the
table's calibration adds what the layers do not see. The Pruner's binary search and
block fill therefore meet latency targets unchanged.

:func:`staircase_widen` then gives channels back where the device does not charge for
them: within the table's noise, a wider group costs the same.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from legr_edge.errors import LegrError
from legr_edge.latency.table import LatencyTable
from legr_edge.prune.cost import CostModel
from legr_edge.prune.ranking import Pruner, within_group_ranks

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LatencyCostModel:
    """Predicted latency (ms) of a keep-mask; the Pruner's cost interface."""

    base: CostModel
    flat: np.ndarray        # all layers' (cin+1) x (cout+1) latency arrays, concatenated
    offset: np.ndarray      # start of each layer's array in ``flat``
    row: np.ndarray         # cout+1 of each layer
    scale: float
    overhead_ms: float
    noise_ms: float
    table: LatencyTable = dataclasses.field(compare=False, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return self.base.names

    def counts(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.base.counts(keep)

    def latency(self, keep: np.ndarray) -> float:
        out, inp = self.base.counts(keep)
        idx = self.offset + np.rint(inp).astype(np.int64) * self.row + np.rint(out).astype(np.int64)
        return self.scale * float(self.flat[idx].sum()) + self.overhead_ms

    def macs(self, keep: np.ndarray) -> float:
        """The Pruner's name for its cost: here predicted milliseconds, not MACs."""
        return self.latency(keep)

    def dense_macs(self, num_channels: int) -> float:
        return self.latency(np.ones(num_channels, dtype=bool))


def load_table(path: str, profile: Any, model: str | None = None) -> LatencyTable:
    """Load a table and refuse it when made for another profile (backend, precision, batch)
    or another network than ``model``."""
    table = LatencyTable.load(path)
    table.check_profile(profile)
    if model and table.model and table.model != model:
        raise LegrError(f"{path}: latency table was built for model {table.model!r}, this run is "
                        f"{model!r}; build one from this run's dense ONNX")
    return table


def build_latency_cost(base: CostModel, table: LatencyTable) -> LatencyCostModel:
    """Match the table's layers to the network's by name and full widths; refuse a mismatch."""
    dense_out, dense_in = base.counts(np.ones(_num_channels(base), dtype=bool))
    layers = {l["name"]: l for l in table.layers}
    missing = [n for n in base.names if n not in layers]
    extra = [n for n in layers if n not in base.names]
    if missing or extra:
        raise LegrError(f"{table.source}: layer signatures do not match this network (not in the table: "
                        f"{', '.join(missing[:4]) or '-'}; only in the table: {', '.join(extra[:4]) or '-'}); "
                        "build the table from this run's dense ONNX")
    wrong = [f"{n} ({int(ci)}->{int(co)} here, {layers[n]['cin']}->{layers[n]['cout']} in the table)"
             for n, ci, co in zip(base.names, dense_in, dense_out)
             if (int(ci), int(co)) != (layers[n]["cin"], layers[n]["cout"])]
    if wrong:
        raise LegrError(f"{table.source}: layer signatures do not match this network: {', '.join(wrong[:3])}")
    luts = [table.layer_lut(n) for n in base.names]
    sizes = np.array([l.size for l in luts])
    return LatencyCostModel(
        base=base, flat=np.concatenate([l.ravel() for l in luts]),
        offset=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        row=np.array([l.shape[1] for l in luts], dtype=np.int64), scale=table.scale,
        overhead_ms=table.overhead_ms, noise_ms=table.noise_ms * table.scale, table=table)


def _num_channels(base: CostModel) -> int:
    chans = np.concatenate([base.out_chan, base.in_chan])
    return int(chans.max()) + 1 if chans.size else 0


def staircase_widen(pruner: Pruner, scores: np.ndarray, mask: np.ndarray,
                    tol_ms: float | None = None) -> tuple[np.ndarray, int]:
    """Grow groups by whole blocks (best-scored first) while the predicted latency stays within
    ``tol_ms`` (default: the table's noise) of the mask's: on a staircase the wider width is free.

    Returns the new mask and the number of channels given back.
    """
    cost = pruner.cost
    if not isinstance(cost, LatencyCostModel):
        return mask, 0
    tol = cost.noise_ms if tol_ms is None else tol_ms
    group = pruner.coupling.group_of_channel
    ranks = within_group_ranks(scores, group)
    protected = pruner.protected(scores)
    # each group's count: the rank of its best channel not kept (protected extras stay kept anyway)
    counts = np.array([g.size for g in pruner.coupling.groups], dtype=np.int64)
    np.minimum.at(counts, group[~mask], ranks[~mask])
    limit = cost.latency(mask) + tol
    changed = True
    while changed:
        changed = False
        for g in pruner.next_blocks(scores, ranks, counts):
            trial = counts.copy()
            trial[g] = pruner.grown(g, counts[g])
            if cost.latency(pruner.mask_from_counts(scores, ranks, trial, protected)) <= limit:
                counts, changed = trial, True
    widened = pruner.mask_from_counts(scores, ranks, counts, protected)
    return widened, int(widened.sum() - mask.sum())


def target_note(name: str, target: float, predicted: float, dense: float) -> str | None:
    """A warning when the floors make a latency target unreachable (1% slack for rounding)."""
    if predicted <= target * dense * 1.01:
        return None
    return (f"{name}: latency target {target:.3f} of dense ({target * dense:.4f} ms) is unreachable with "
            f"these floors; closest reachable: {predicted:.4f} ms ({predicted / dense:.3f} of dense)")
