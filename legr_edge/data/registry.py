"""``load_dataset`` / ``DATASETS``: the one entry point that picks a loader by name."""
from __future__ import annotations

import logging
from typing import Callable

from legr_edge.data.base import DataBundle, check_val_fraction
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "shapes", "cifar10", "cifar100", "imagefolder")
NEEDS_DATA_DIR = frozenset({"cifar10", "cifar100", "imagefolder"})


def _loader(name: str) -> Callable[..., DataBundle]:
    """The loader for ``name``, imported lazily (each module is independent)."""
    if name == "digits":
        from legr_edge.data.digits import load_digits
        return lambda data_dir, **kw: load_digits(**kw)
    if name == "shapes":
        from legr_edge.data.shapes import load_shapes
        return lambda data_dir, **kw: load_shapes(**kw)
    if name == "cifar10":
        from legr_edge.data.cifar import load_cifar10
        return load_cifar10
    if name == "cifar100":
        from legr_edge.data.cifar import load_cifar100
        return load_cifar100
    from legr_edge.data.imagefolder import load_imagefolder
    return load_imagefolder


def load_dataset(name: str, data_dir: str | None = None, *, val_fraction: float = 0.1,
                 seed: int = 0, image_size: tuple[int, int] | None = None) -> DataBundle:
    """Load data set ``name`` as a DataBundle (train minus val, val, test).

    ``data_dir`` is required for cifar10, cifar100 and imagefolder and ignored
    (with a warning) for the built-in digits and shapes. ``val_fraction`` of the
    training split, stratified by class and chosen by ``seed``, becomes ``val``.
    ``image_size`` (H, W) is honoured by digits and imagefolder; the 32x32 sets
    accept only their native size.
    """
    if name not in DATASETS:
        raise LegrError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    check_val_fraction(val_fraction)
    if data_dir is not None and name not in NEEDS_DATA_DIR:
        log.warning("data set %r is built in; ignoring data_dir=%s", name, data_dir)
    bundle = _loader(name)(data_dir, val_fraction=val_fraction, seed=seed, image_size=image_size)
    log.info("data set %s: %d train, %d val, %d test images of %dx%d, %d classes",
             name, len(bundle.train), len(bundle.val), len(bundle.test),
             *bundle.info.image_size, bundle.info.num_classes)
    return bundle
