"""Choosing: turn global channel scores into a keep-mask that meets a cost target.

The scores come from ``legr_edge.prune.scoring`` (per-layer normalised filter norms
under LeGR's learned affine transform, one score per coupled channel). Pruning to a
target keeps the top-scored channels, found by binary search of one global threshold.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from legr_edge.errors import LegrError
from legr_edge.prune.coupling import Coupling
from legr_edge.prune.cost import CostModel
from legr_edge.prune.scoring import LayerScores, base_scores, within_group_ranks  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pruner:
    """Turns global channel scores into a keep-mask that meets a MAC target."""

    coupling: Coupling
    cost: CostModel
    round_to: int = 1
    min_fraction: float = 0.1
    min_channels: int = 2

    def __post_init__(self):
        if self.round_to < 1:
            raise LegrError(f"--round-to must be >= 1, got {self.round_to}")
        sizes = np.array([g.size for g in self.coupling.groups])
        object.__setattr__(self, "_sizes", sizes)
        object.__setattr__(self, "_group", self.coupling.group_of_channel)
        object.__setattr__(self, "_floor", self._floors(sizes))
        object.__setattr__(self, "dense_macs", self.cost.dense_macs(int(sizes.sum())))
        object.__setattr__(self, "_partial", self._partial_members())

    def _partial_members(self) -> list[tuple[np.ndarray, int]]:
        """Convs that own only part of a group (concat inputs) and their channel floors.

        The group floor alone could remove every channel of such a conv; each keeps at
        least its own floor of its best-scored channels.
        """
        partial = []
        for g in self.coupling.groups:
            for m in g.members:
                roots = np.unique(m.roots)
                if m.is_out and len(roots) < g.size:
                    partial.append((roots, int(self._floors(np.array([len(roots)]))[0])))
        return partial

    def _floors(self, sizes: np.ndarray) -> np.ndarray:
        floor = np.maximum(self.min_channels, np.ceil(self.min_fraction * sizes))
        floor = np.ceil(floor / self.round_to) * self.round_to
        return np.minimum(floor, sizes).astype(np.int64)

    def group_counts(self, raw: np.ndarray) -> np.ndarray:
        """Apply the per-group floor and the rounding to multiples of ``round_to``."""
        n = self.round_to
        rounded = np.where(raw >= self._sizes, self._sizes, np.floor(raw / n + 0.5) * n)
        return np.maximum(self._floor, np.minimum(rounded, self._sizes)).astype(np.int64)

    def counts_for_threshold(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        raw = np.bincount(self._group, weights=(scores >= threshold), minlength=len(self._sizes))
        return self.group_counts(raw)

    def protected(self, scores: np.ndarray) -> np.ndarray:
        """Channels kept whatever the threshold: each concat input's floor of best channels."""
        keep = np.zeros(len(scores), dtype=bool)
        for roots, floor in self._partial:
            keep[roots[np.argsort(-scores[roots], kind="stable")[:floor]]] = True
        return keep

    def mask_from_counts(self, scores: np.ndarray, ranks: np.ndarray, counts: np.ndarray,
                         protected: np.ndarray | None = None) -> np.ndarray:
        """Keep the ``counts[g]`` best channels of every group (and each concat input's floor)."""
        if protected is None:
            protected = self.protected(scores)
        return (ranks < counts[self._group]) | protected

    def mask_for_threshold(self, scores: np.ndarray, ranks: np.ndarray, threshold: float,
                           protected: np.ndarray | None = None) -> np.ndarray:
        return self.mask_from_counts(scores, ranks, self.counts_for_threshold(scores, threshold), protected)

    def prune_to(self, scores: np.ndarray, target: float) -> tuple[np.ndarray, int]:
        """Keep-mask with the largest MACs <= ``target`` * dense MACs, and those MACs.

        Binary search over the sorted distinct scores: a higher threshold never keeps
        more channels, so MACs fall monotonically. With rounding, one threshold step can
        move a whole residual chain by a block of ``round_to`` channels, so with rounding
        the result is then filled greedily with the best-scored next blocks that still fit. If even the
        per-layer floors exceed the target, the floor network is returned (with a warning).
        """
        if not 0.0 < target <= 1.0:
            raise LegrError(f"target must be in (0, 1], got {target}")
        budget = target * self.dense_macs
        ranks = within_group_ranks(scores, self._group)
        keep = self.protected(scores)
        levels = np.append(np.unique(scores), np.inf)
        lo, hi = 0, len(levels) - 1  # levels[hi] keeps only the floors
        if self.cost.macs(self.mask_for_threshold(scores, ranks, levels[lo], keep)) <= budget:
            hi = lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cost.macs(self.mask_for_threshold(scores, ranks, levels[mid], keep)) <= budget:
                hi = mid
            else:
                lo = mid
        counts = self.counts_for_threshold(scores, levels[hi])
        if self.round_to > 1:  # without rounding the threshold is already one channel from the target
            counts = self._fill(scores, ranks, counts, budget, keep)
        mask = self.mask_from_counts(scores, ranks, counts, keep)
        macs = self.cost.macs(mask)
        if macs > budget:
            log.warning("target %.3f cannot be met: the per-layer floors (min %d channels, %.0f%%, "
                        "multiples of %d) keep %.3f of the dense MACs", target, self.min_channels,
                        100 * self.min_fraction, self.round_to, macs / self.dense_macs)
        return mask, macs

    def _fill(self, scores: np.ndarray, ranks: np.ndarray, counts: np.ndarray, budget: float,
              keep: np.ndarray) -> np.ndarray:
        """Grow groups by whole blocks, best-scored block first, while MACs stay within budget."""
        while True:
            for g in self.next_blocks(scores, ranks, counts):
                trial = counts.copy()
                trial[g] = self.grown(g, counts[g])
                if self.cost.macs(self.mask_from_counts(scores, ranks, trial, keep)) <= budget:
                    counts = trial
                    break
            else:
                return counts

    def counts_at_fractions(self, fractions: np.ndarray) -> np.ndarray:
        """Per-group widths keeping ``fractions[g]`` of each group (floors and rounding applied)."""
        return self.group_counts(np.asarray(fractions, dtype=np.float64) * self._sizes)

    def stream_counts(self, scores: np.ndarray, streams: np.ndarray, stream_fraction: np.ndarray,
                      target: float) -> np.ndarray | None:
        """Widths that keep ``stream_fraction[g]`` of every stream group (``streams``) and one
        common fraction of all other groups, the largest that meets ``target`` (bisected; the
        channels kept are each group's best by ``scores``). None when the streams alone,
        with every other group at its floor, exceed the target."""
        budget = target * self.dense_macs
        ranks = within_group_ranks(scores, self._group)
        keep = self.protected(scores)

        def counts(q: float) -> np.ndarray:
            return self.counts_at_fractions(np.where(streams, stream_fraction, q))

        def fits(q: float) -> bool:
            return self.cost.macs(self.mask_from_counts(scores, ranks, counts(q), keep)) <= budget

        if not fits(0.0):
            return None
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return counts(lo)

    def grown(self, g: int, count: int) -> int:
        """Group ``g``'s next allowed width above ``count``."""
        return int(min(self._sizes[g], count + self.round_to))

    def next_blocks(self, scores: np.ndarray, ranks: np.ndarray, counts: np.ndarray) -> list[int]:
        """Groups that can grow, ordered by the best score of the channels they would add."""
        best = np.full(len(self._sizes), -np.inf)
        growing = (ranks >= counts[self._group]) & (ranks < counts[self._group] + self.round_to)
        np.maximum.at(best, self._group[growing], scores[growing])
        return sorted(np.flatnonzero(counts < self._sizes), key=lambda g: -best[g])
