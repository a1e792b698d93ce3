"""``imagefolder``: your own images, one folder per class.

Layout::

    data_dir/train/<class>/*.{png,jpg,jpeg,bmp,webp}   training (val is carved from it)
    data_dir/val/<class>/...                            the TEST split (final reports only)

Classes are the sub-folders of ``train/``, sorted by name (label = position).
``val/`` may hold a subset of them; a class there that ``train/`` lacks, an
empty class folder, or a missing ``train/``/``val/`` is an error. Images are
decoded lazily with Pillow in :meth:`ImageFolderSet.get`: converted to RGB,
resized so the shorter side covers ``image_size`` (default 224x224) and
centre-cropped to it. Normalisation uses ImageNet's mean/std.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legr_edge.data.base import DataBundle, DataInfo, ImageSet, make_bundle, parse_image_size
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
DEFAULT_SIZE = (224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pil_image() -> Any:
    """Pillow's Image module, imported on first use (only this loader needs it)."""
    try:
        from PIL import Image
    except ImportError:
        raise LegrError("the imagefolder data set needs Pillow: pip install pillow") from None
    return Image


class ImageFolderSet(ImageSet):
    """Image files decoded on demand to uint8 (B, H, W, 3) at a fixed size."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray,
                 image_size: tuple[int, int]) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = tuple(Path(p) for p in paths)
        self.image_size = image_size
        self._labels = np.asarray(labels, dtype=np.int64)
        self._labels.setflags(write=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self._check_indices(indices)
        out = np.empty((len(idx), *self.image_size, 3), dtype=np.uint8)
        for row, i in enumerate(idx):
            out[row] = load_image(self.paths[i], self.image_size)
        return out, self._labels[idx]


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` to RGB, scale its shorter side to cover ``size``, centre-crop.

    Returns uint8 (H, W, 3). Unreadable files raise LegrError naming the file.
    """
    image_mod = _pil_image()
    out_h, out_w = size
    try:
        with image_mod.open(path) as img:
            w, h = img.size
            scale = max(out_h / h, out_w / w)
            new_w, new_h = max(out_w, math.ceil(w * scale - 1e-6)), max(out_h, math.ceil(h * scale - 1e-6))
            img.draft("RGB", (new_w, new_h))  # JPEG: decode at a reduced scale, still >= target
            rgb = img.convert("RGB")
            if rgb.size != (new_w, new_h):
                rgb = rgb.resize((new_w, new_h), image_mod.BILINEAR)
    except (OSError, ValueError, image_mod.DecompressionBombError) as e:
        raise LegrError(f"cannot decode image {path}: {e}") from None
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    return np.asarray(rgb.crop((left, top, left + out_w, top + out_h)), dtype=np.uint8)


def scan_split(split_dir: Path, classes: Sequence[str] | None = None
               ) -> tuple[list[str], list[Path], np.ndarray]:
    """List (class names, image paths, labels) under ``split_dir/<class>/``.

    With ``classes`` given (the training classes), labels follow that order and a
    folder not among them is an error; otherwise the sorted folder names are the classes.
    """
    if not split_dir.is_dir():
        raise LegrError(f"imagefolder: {split_dir} is missing (expected "
                        f"{split_dir.parent}/train/<class>/*.png and .../val/<class>/...)")
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LegrError(f"imagefolder: {split_dir} has no class folders")
    if classes is None:
        classes = folders
    unknown = [f for f in folders if f not in classes]
    if unknown:
        raise LegrError(f"imagefolder: class folder(s) {unknown} in {split_dir} are not in "
                        f"train/ (training classes: {list(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        files = _image_files(split_dir / folder)
        paths += files
        labels += [index[folder]] * len(files)
    return list(classes), paths, np.asarray(labels, dtype=np.int64)


def _image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in ``folder``; LegrError if there are none."""
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith("."))
    if not files:
        raise LegrError(f"imagefolder: class folder {folder} holds no images "
                        f"({', '.join(sorted(EXTENSIONS))})")
    return files


def load_imagefolder(data_dir: str | None, val_fraction: float = 0.1, seed: int = 0,
                     image_size: tuple[int, int] | None = None) -> DataBundle:
    """Bundle from ``data_dir/train`` (train + carved val) and ``data_dir/val`` (test)."""
    if data_dir is None:
        raise LegrError("data set 'imagefolder' needs --data-dir: a folder with "
                        "train/<class>/ and val/<class>/ image folders")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise LegrError(f"imagefolder: data directory {root} does not exist")
    size = parse_image_size("imagefolder", image_size) or DEFAULT_SIZE
    classes, train_paths, train_labels = scan_split(root / "train")
    _, test_paths, test_labels = scan_split(root / "val", classes)
    log.info("imagefolder %s: %d classes, %d train+val images, %d test images",
             root, len(classes), len(train_paths), len(test_paths))
    info = DataInfo(name="imagefolder", num_classes=len(classes), in_chans=3, image_size=size,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip=True, class_names=tuple(classes))
    return make_bundle(info, ImageFolderSet(train_paths, train_labels, size),
                       ImageFolderSet(test_paths, test_labels, size), val_fraction, seed)
