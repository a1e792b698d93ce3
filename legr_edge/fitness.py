"""How a candidate ranking is scored during the search: a pruned network in, a number out.

The product's fitness (LEGR.md, "v2"): ``tau`` SGD steps (default 10) on a FIXED
sequence of training batches, then recalibrate the pruned network's BatchNorm statistics
on a FIXED set of training batches (forward passes, no gradients), then measure the
validation loss (or top-1) on a FIXED validation subset. Every candidate sees the same
tau batches, recalibration batches and validation images (common random numbers), so
two candidates differ only by their ranking, not by the luck of their batches.

Why a few steps: right after pruning at 0.2-0.3 of the MACs, the networks sit at 20-30%
top-1 even after recalibration, and their recalibrated validation loss hardly predicts
what fine-tuning makes of them (Spearman 0.13 over 24 candidates, benchmarks/RESULTS.md,
"fitness_study"); ten steps first lift it to 0.91 for about one second per candidate.
The paper's fitness (tau steps, each candidate on ITS OWN batches, no recalibration,
accuracy) is ``tau_batches="per_candidate"``, ``recal_batches=0``.

``round`` selects an independent draw of recalibration batches: the search uses
round 0; the final choice re-scores its finalists on rounds 1..R.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from legr_edge.train import Normalizer, SGDSettings, recalibrate_bn, train_steps


@dataclasses.dataclass(frozen=True)
class FitnessSettings:
    metric: str = "loss"            # loss (fitness = -loss) | accuracy
    recal_batches: int = 16         # 0 = no BatchNorm recalibration (the paper)
    batch_size: int = 64
    val_limit: int = 0              # 0 = the whole validation split
    tau: int = 0                    # SGD steps before measuring (the product: 10, the paper: 200)
    tau_lr: float = 0.01
    common_batches: bool = True     # tau batches: the same for every candidate (else per candidate)
    seed: int = 0


class FitnessEvaluator:
    """Holds the fixed recalibration batches and validation tensors of one round."""

    def __init__(self, data, info, device: torch.device, settings: FitnessSettings, round: int = 0):
        self.data, self.info, self.device, self.s, self.round = data, info, device, settings, round
        norm = Normalizer.from_info(info, device)
        self.recal = self._recal_inputs(norm, round)
        n_val = len(data.val) if not settings.val_limit else min(settings.val_limit, len(data.val))
        images, labels = data.val.get(np.arange(n_val))
        self.val_x = [norm(images[i:i + 256]) for i in range(0, n_val, 256)]
        self.val_y = [torch.from_numpy(labels[i:i + 256]).to(device) for i in range(0, n_val, 256)]

    def _recal_inputs(self, norm: Normalizer, round: int) -> list[torch.Tensor]:
        n = self.s.recal_batches * self.s.batch_size
        if n == 0:
            return []
        rng = np.random.default_rng([self.s.seed, 7919, round])
        idx = rng.choice(len(self.data.train), size=min(n, len(self.data.train)), replace=False)
        images, _ = self.data.train.get(np.sort(idx))
        order = rng.permutation(len(idx))  # batches mix classes whatever the split's order
        images = images[order]
        return [norm(images[i:i + self.s.batch_size]) for i in range(0, len(idx), self.s.batch_size)]

    def __call__(self, net: nn.Module, k: int = 0) -> tuple[float, dict[str, float]]:
        """Fitness (higher is better) of pruned ``net``; ``k`` seeds its tau steps."""
        s = self.s
        if s.tau:
            sgd = SGDSettings(lr=s.tau_lr, schedule="constant", batch_size=s.batch_size)
            seed = self.tau_seed(k)
            torch.manual_seed(seed)
            train_steps(net, self.data.train, self.info, s.tau, sgd, self.device, seed)
        if self.recal:
            recalibrate_bn(net, self.recal)
        top1, loss = self.measure(net)
        return (top1 if s.metric == "accuracy" else -loss), {"val_top1": top1, "val_loss": loss}

    def tau_seed(self, k: int) -> int:
        """Seed of candidate ``k``'s tau batches: the round's own (common) or the candidate's."""
        base = self.s.seed * 1_000_003
        return base + 999_983 * (self.round + 1) if self.s.common_batches else base + k

    @torch.no_grad()
    def measure(self, net: nn.Module) -> tuple[float, float]:
        """Top-1 (%) and mean cross-entropy on the fixed validation subset."""
        net.eval()
        correct, loss_sum, n = 0, 0.0, 0
        for x, y in zip(self.val_x, self.val_y):
            logits = net(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        return 100.0 * correct / max(n, 1), loss_sum / max(n, 1)
