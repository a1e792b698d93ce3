"""Regenerate ``digits.npz`` from scikit-learn (a one-off; not needed at run time).

Source: the UCI "Optical Recognition of Handwritten Digits" data set (test part,
1797 images of 8x8 pixels with values 0..16), E. Alpaydin and C. Kaynak, 1998,
https://archive.ics.uci.edu/dataset/80, licensed CC BY 4.0, as shipped by
scikit-learn (BSD-3-Clause) in ``sklearn.datasets.load_digits``.

Usage (from the repository root, with scikit-learn installed)::

    python -m legr_edge.data.make_digits_npz

writes ``legr_edge/data/digits.npz`` with ``images`` uint8 (1797, 8, 8), values
0..16, and ``labels`` uint8 (1797,), in scikit-learn's order.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from legr_edge.io import atomic_path

log = logging.getLogger(__name__)

OUT = Path(__file__).with_name("digits.npz")


def build() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 8, 8) in 0..16, labels uint8 (N,)) from scikit-learn."""
    from sklearn.datasets import load_digits  # only this one-off script needs it

    bunch = load_digits()
    images = np.asarray(bunch.images)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 16:
        raise RuntimeError("unexpected values in sklearn digits")
    return images.astype(np.uint8), np.asarray(bunch.target).astype(np.uint8)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    images, labels = build()
    with atomic_path(OUT) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images, labels=labels)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; this ships as package data
    log.info("wrote %s: %d images", OUT, len(images))


if __name__ == "__main__":
    main()
