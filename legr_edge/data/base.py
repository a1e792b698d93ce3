"""Core data types: what a data set is (DataInfo), how images are served (ImageSet)
and the train/val/test bundle every loader returns (DataBundle).

Images are always served as uint8 NHWC arrays and labels as int64, so the same
objects feed the torch training code (which converts batches itself) and the
torch-free device half. Nothing here imports torch.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np

from legr_edge.errors import LegrError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataInfo:
    """Static description of a data set, as the model and the augmentation need it.

    ``mean``/``std`` are per channel on the [0, 1] scale (pixel / 255), so a
    consumer normalises with ``(x / 255 - mean) / std``.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"{self.name}: mean/std need {self.in_chans} values each")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names "
                             f"for {self.num_classes} classes")


class ImageSet(abc.ABC):
    """A sized, indexable collection of labelled uint8 images (NHWC)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @property
    @abc.abstractmethod
    def labels(self) -> np.ndarray:
        """All labels as int64 (N,); cheap (never decodes an image)."""

    @abc.abstractmethod
    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (B, H, W, C) and labels int64 (B,) at ``indices``."""

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        """Indices as int64 1-D, bounds-checked (negative indices are refused)."""
        idx = np.asarray(indices)
        if idx.ndim == 0:
            idx = idx.reshape(1)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a set of {len(self)} images")
        return idx


class ArraySet(ImageSet):
    """Images held in memory as one uint8 NHWC array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be (N,) with N={len(images)}, got {labels.shape}")
        self._images = images
        self._labels = labels.astype(np.int64)
        self._labels.setflags(write=False)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self._check_indices(indices)
        return self._images[idx], self._labels[idx]


class SubsetSet(ImageSet):
    """A view of ``base`` restricted to ``indices`` (positions in ``base``)."""

    def __init__(self, base: ImageSet, indices: np.ndarray) -> None:
        self.base = base
        self.indices = base._check_indices(indices).copy()
        self.indices.setflags(write=False)
        self._labels = base.labels[self.indices]
        self._labels.setflags(write=False)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self._check_indices(indices)
        return self.base.get(self.indices[idx])


@dataclass(frozen=True)
class DataBundle:
    """The three splits of a data set.

    ``val`` is carved from the training data (seeded, disjoint from ``train``) and
    is what search and model selection may look at; ``test`` is the data set's own
    test split, meant only for final reports.
    """

    info: DataInfo
    train: ImageSet
    val: ImageSet
    test: ImageSet


def check_val_fraction(val_fraction: float) -> float:
    """Return ``val_fraction`` as float, or raise LegrError unless 0 < it < 1."""
    try:
        frac = float(val_fraction)
    except (TypeError, ValueError):
        raise LegrError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}") from None
    if not 0.0 < frac < 1.0:
        raise LegrError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    return frac


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into (kept, held-out), stratified by label.

    Each class contributes ``round(fraction * n_class)`` items to the held-out part,
    at least one when the class has two or more items and never all of them, so
    every class stays in both parts where possible. Same labels and seed give the
    same split; both results are sorted int64 and disjoint.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_held = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)
        else:
            n_held = 0
        held.append(rng.permutation(members)[:n_held])
    held_idx = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx


def make_bundle(info: DataInfo, train_full: ImageSet, test: ImageSet,
                val_fraction: float, seed: int) -> DataBundle:
    """Carve a seeded stratified validation part out of ``train_full``."""
    frac = check_val_fraction(val_fraction)
    train_idx, val_idx = stratified_split(train_full.labels, frac, seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise LegrError(f"{info.name}: {len(train_full)} training images are too few to "
                        f"carve a validation part of val_fraction={frac}")
    log.debug("%s: %d train, %d val, %d test", info.name, len(train_idx), len(val_idx), len(test))
    return DataBundle(info=info, train=SubsetSet(train_full, train_idx),
                      val=SubsetSet(train_full, val_idx), test=test)


def parse_image_size(name: str, image_size: object) -> tuple[int, int] | None:
    """``image_size`` as (H, W) positive ints, None passed through; else LegrError."""
    if image_size is None:
        return None
    try:
        size = tuple(int(s) for s in image_size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise LegrError(f"{name}: image_size must be (H, W) with positive integers, "
                        f"got {image_size!r}")
    return size  # type: ignore[return-value]
