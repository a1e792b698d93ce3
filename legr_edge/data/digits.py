"""``digits``: the embedded default data set (no download, no data directory).

scikit-learn's copy of the UCI handwritten digits (1797 grey 8x8 images, values
0..16, 10 classes; UCI data CC BY 4.0, scikit-learn BSD-3-Clause) is stored in
``digits.npz`` next to this file; ``make_digits_npz.py`` says how it was made.
scikit-learn is not needed at run time.

The images are presented at 32x32 by default (so the default models see
CIFAR-scale inputs and latencies), upsampled bilinearly and scaled to 0..255.
A fixed, stratified 20% test split is carved with a fixed seed, independent of
the user's seed; the validation part is carved from the remaining 80%.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from legr_edge.data.base import (ArraySet, DataBundle, DataInfo, make_bundle, parse_image_size,
                                stratified_split)
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

NPZ_PATH = Path(__file__).with_name("digits.npz")
DEFAULT_SIZE = (32, 32)
TEST_FRACTION = 0.2
TEST_SEED = 20240601  # fixed: the test split never changes with the user's seed
MAX_VALUE = 16


def load_raw(path: Path = NPZ_PATH) -> tuple[np.ndarray, np.ndarray]:
    """Return the stored (images uint8 (N, 8, 8) in 0..16, labels int64 (N,))."""
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise LegrError(f"cannot read the embedded digits data {path}: {e} "
                        "(reinstall legr_edge or run python -m legr_edge.data.make_digits_npz)"
                        ) from None
    return images.astype(np.uint8), labels.astype(np.int64)


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize float images (N, h, w) to (N, H, W), pixel-centre aligned.

    Uses half-pixel centres (as PIL and OpenCV do), clamping at the borders, so an
    upsampled image has the same mean brightness layout as the original.
    """
    _, h, w = images.shape
    out_h, out_w = size
    y0, y1, wy = _axis_weights(h, out_h)
    x0, x1, wx = _axis_weights(w, out_w)
    rows = images[:, y0, :] * (1 - wy)[None, :, None] + images[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lower, upper) and upper weights for one axis of a resize."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def present(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """8x8 images in 0..16 -> uint8 (N, H, W, 1) in 0..255 at ``size``."""
    scaled = images.astype(np.float64) * (255.0 / MAX_VALUE)
    if tuple(size) != images.shape[1:]:
        scaled = resize_bilinear(scaled, size)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)[..., None]


def load_digits(val_fraction: float = 0.1, seed: int = 0,
                image_size: tuple[int, int] | None = None) -> DataBundle:
    """The digits bundle: fixed 20% test split, seeded validation part of the rest."""
    size = _check_size(image_size)
    raw, labels = load_raw()
    images = present(raw, size)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, TEST_SEED)
    mean, std = _channel_stats(images[train_idx])
    info = DataInfo(name="digits", num_classes=10, in_chans=1, image_size=size,
                    mean=mean, std=std, hflip=False,
                    class_names=tuple(str(d) for d in range(10)))
    train_full = ArraySet(images[train_idx], labels[train_idx])
    test = ArraySet(images[test_idx], labels[test_idx])
    return make_bundle(info, train_full, test, val_fraction, seed)


def _check_size(image_size: tuple[int, int] | None) -> tuple[int, int]:
    """Validated (H, W): the default 32x32, or any size from 8x8 to 512x512."""
    size = parse_image_size("digits", image_size)
    if size is None:
        return DEFAULT_SIZE
    if not all(8 <= s <= 512 for s in size):
        raise LegrError(f"digits: image_size must be (H, W) with 8 <= H, W <= 512, got {image_size!r}")
    return size


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale (deterministic: pure numpy)."""
    x = images.astype(np.float64) / 255.0
    axes = (0, 1, 2)
    return (tuple(round(float(v), 4) for v in x.mean(axis=axes)),
            tuple(round(float(v), 4) for v in x.std(axis=axes)))
