"""Training, short fine-tuning and evaluation on the data package's image sets.

Batches come as uint8 NHWC arrays from ``ImageSet.get``; they are normalised and
augmented here as tensors (random crop with reflection-free zero padding of 1/8 of
the side, horizontal flip where the data set allows it). Every loop is seeded so the
same seed gives the same numbers on the CPU.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_info(cls, info, device: torch.device) -> "Normalizer":
        shape = (1, len(info.mean), 1, 1)
        return cls(torch.tensor(info.mean, device=device).view(shape),
                   torch.tensor(info.std, device=device).view(shape))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.mean.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std


@dataclasses.dataclass(frozen=True)
class SGDSettings:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    batch_size: int = 128
    schedule: str = "cosine"   # cosine | step (x0.2 at 30/60/80%) | constant


def batches(dataset, batch_size: int, shuffle: bool, gen: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(dataset)
    order = torch.randperm(n, generator=gen).numpy() if shuffle else np.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield dataset.get(order[i:i + batch_size])


def augment(x: torch.Tensor, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by 1/8 of the side, and optional flips."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)
    out = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1),
                 torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    return out


def _lr_at(settings: SGDSettings, step: int, total: int) -> float:
    frac = step / max(total, 1)
    if settings.schedule == "cosine":
        return settings.lr * 0.5 * (1 + math.cos(math.pi * frac))
    if settings.schedule == "step":
        return settings.lr * 0.2 ** sum(frac >= m for m in (0.3, 0.6, 0.8))
    return settings.lr


def _optimizer(model: nn.Module, s: SGDSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                           weight_decay=s.weight_decay, nesterov=s.nesterov and s.momentum > 0)


class Trainer:
    """One SGD run: optimizer, LR schedule over ``total`` steps, seeded augmentation."""

    def __init__(self, model: nn.Module, info, settings: SGDSettings, total: int,
                 device: torch.device, seed: int):
        self.model, self.info, self.settings, self.total = model, info, settings, total
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        self.norm = Normalizer.from_info(info, device)
        self.opt = _optimizer(model, settings)
        self.done = 0

    def epoch(self, data, limit: int | None = None, bar: tqdm | None = None) -> float:
        """One pass over ``data`` (or ``limit`` steps); returns the mean loss."""
        self.model.train()
        losses = []
        for images, labels in batches(data, self.settings.batch_size, True, self.gen, drop_last=True):
            if limit is not None and len(losses) >= limit:
                break
            losses.append(self._step(images, labels))
            if bar is not None:
                bar.update(1)
        return float(np.mean(losses)) if losses else 0.0

    def _step(self, images: np.ndarray, labels: np.ndarray) -> float:
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(self.settings, self.done, self.total)
        x = augment(self.norm(images), self.info.hflip, self.gen)
        loss = F.cross_entropy(self.model(x), torch.from_numpy(labels).to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.done += 1
        return loss.item()


def train_steps(model: nn.Module, data, info, steps: int, settings: SGDSettings,
                device: torch.device, seed: int) -> float:
    """Train for ``steps`` SGD steps (cycling the data); returns the mean training loss."""
    trainer = Trainer(model, info, settings, steps, device, seed)
    losses = []
    while trainer.done < steps:
        losses.append(trainer.epoch(data, limit=steps - trainer.done))
    return float(np.mean(losses))


def steps_per_epoch(data, batch_size: int) -> int:
    return max(1, len(data) // batch_size)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, inputs: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics on ``inputs`` (no gradients).

    Pruning removes channels that fed the surviving ones, so the dense model's running
    statistics are stale and accuracy right after pruning is near chance. The statistics
    are reset and re-accumulated as a plain average over the given (already normalised)
    batches; weights do not change. Leaves the model in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not inputs:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for x in inputs:
            model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data, info, device: torch.device,
             batch_size: int = 256) -> tuple[float, float]:
    """Top-1 accuracy in percent and mean cross-entropy over ``data``."""
    norm = Normalizer.from_info(info, device)
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for images, labels in batches(data, batch_size, shuffle=False):
        y = torch.from_numpy(labels).to(device)
        logits = model(norm(images))
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(labels)
    return 100.0 * correct / max(n, 1), loss_sum / max(n, 1)


def fit(model: nn.Module, train, val, info, epochs: int, settings: SGDSettings,
        device: torch.device, seed: int, desc: str) -> tuple[nn.Module, float]:
    """Train ``epochs`` epochs; keep the weights of the best VALIDATION epoch.

    Returns the model and that validation top-1. The test split is never looked at
    here: model selection uses validation only.
    """
    if epochs == 0:
        return model, evaluate(model, val, info, device)[0]
    total = steps_per_epoch(train, settings.batch_size) * epochs
    trainer = Trainer(model, info, settings, total, device, seed)
    best_state, best_acc = None, -1.0
    with _bar(total, desc) as bar:
        for epoch in range(epochs):
            loss = trainer.epoch(train, bar=bar)
            acc, _ = evaluate(model, val, info, device)
            bar.set_postfix(epoch=epoch + 1, val_top1=f"{acc:.2f}")
            log.info("%s: epoch %d/%d, train loss %.4f, val top-1 %.2f", desc, epoch + 1, epochs, loss, acc)
            if acc >= best_acc:
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, best_acc


@contextlib.contextmanager
def _bar(total: int, desc: str):
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True,
               disable=None)
    try:
        yield bar
    finally:
        bar.close()
