"""Data sets legr_edge trains and evaluates on (numpy only: never imports torch).

``load_dataset(name, data_dir=None, *, val_fraction=0.1, seed=0, image_size=None)``
returns a :class:`DataBundle` with ``info`` (:class:`DataInfo`: classes, channels,
size, mean/std on the [0, 1] scale, whether horizontal flips are valid) and three
:class:`ImageSet` splits: ``train`` (the training split minus ``val``), ``val``
(carved from the training split, stratified, by ``seed``) and ``test`` (the data
set's own test split, for final reports only). ``ImageSet.get(indices)`` returns
uint8 images (B, H, W, C) and int64 labels (B,); ``ImageSet.labels`` all labels.

Data sets (``DATASETS``):

- ``digits``: built in (default); UCI handwritten digits, 1 channel, 8x8 shown at 32x32.
- ``shapes``: built in, generated; 10 classes of cluttered shapes, 32x32 RGB.
- ``cifar10`` / ``cifar100``: CIFAR python-pickle folders (``data_dir``), read safely.
- ``imagefolder``: ``data_dir/train/<class>/`` and ``data_dir/val/<class>/`` (= test).
"""
from legr_edge.data.base import ArraySet, DataBundle, DataInfo, ImageSet, SubsetSet
from legr_edge.data.imagefolder import ImageFolderSet
from legr_edge.data.registry import DATASETS, load_dataset

__all__ = ["ArraySet", "DATASETS", "DataBundle", "DataInfo", "ImageFolderSet", "ImageSet",
           "SubsetSet", "load_dataset"]
