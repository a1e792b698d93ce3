"""``cifar10`` / ``cifar100`` from the standard CIFAR "python version" folders.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta`` (``label_names``). CIFAR-100
(``cifar-100-python``): ``train``, ``test`` and ``meta`` (``fine_label_names``);
the fine labels are used. ``data_dir`` may be that folder or its parent.

The files are pickles, and unpickling runs whatever callables the file names,
so they are read with :class:`SafeUnpickler`, which resolves only the handful
of numpy globals that an array needs and refuses everything else (before any
of it runs). ``batches.meta``/``meta`` are optional: without them the class
names are CIFAR-10's standard ones or ``fine_00``.. for CIFAR-100.
"""
from __future__ import annotations

import codecs
import logging
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from legr_edge.data.base import ArraySet, DataBundle, DataInfo, make_bundle, parse_image_size
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

CIFAR_SIZE = (32, 32)
PIXELS = 3 * 32 * 32

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the training images on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The only globals a pickled numpy array needs, under both numpy 1 and 2 names."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that builds only numpy arrays, dicts, lists, strings and numbers.

    ``find_class`` is the single place a pickle can reach code; it answers from a
    fixed allow-list and raises LegrError for anything else (``os.system``,
    ``builtins.eval``, ...), so a malicious file is refused before it runs.
    """

    _ALLOWED = _numpy_globals()

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise LegrError(f"{self._path}: refusing to unpickle {module}.{name}; a CIFAR "
                            "batch holds only numpy arrays, lists and strings "
                            "(is this file really from CIFAR?)") from None


def safe_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`; errors become LegrError."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path).load()
    except LegrError:
        raise
    except OSError as e:
        raise LegrError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # malformed pickles raise many types
        raise LegrError(f"{path} is not a readable CIFAR pickle: {type(e).__name__}: {e}") from None


def _get(batch: dict, key: str, path: Path) -> Any:
    """``batch[key]`` accepting bytes or str keys; LegrError naming file and key."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    found = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in batch)
    raise LegrError(f"{path}: not a CIFAR batch, key '{key}' missing (keys: {found})")


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 (N, 32, 32, 3), labels int64 (N,))."""
    batch = safe_load(path)
    if not isinstance(batch, dict):
        raise LegrError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, not a dict)")
    data = _get(batch, "data", path)
    labels = np.asarray(_get(batch, label_key, path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise LegrError(f"{path}: key 'data' must be uint8 (N, {PIXELS}), got {desc}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise LegrError(f"{path}: key '{label_key}' must hold {len(data)} integer labels, "
                        f"got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise LegrError(f"{path}: key '{label_key}' has labels outside 0..{num_classes - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _read_names(path: Path, key: str, expected: int) -> tuple[str, ...] | None:
    """``expected`` class names from a meta file, or None if the file is absent."""
    if not path.is_file():
        return None
    meta = safe_load(path)
    if not isinstance(meta, dict):
        raise LegrError(f"{path}: not a CIFAR meta file (a {type(meta).__name__}, not a dict)")
    names = _get(meta, key, path)
    if not isinstance(names, (list, tuple)) or len(names) != expected:
        raise LegrError(f"{path}: key '{key}' must list {expected} class names")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def _resolve_dir(data_dir: str | None, name: str, marker: str, subdir: str) -> Path:
    """The folder holding ``marker``: ``data_dir`` itself or ``data_dir/subdir``."""
    if data_dir is None:
        raise LegrError(f"data set '{name}' needs --data-dir: the folder with the CIFAR "
                        f"python batches ('{subdir}')")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise LegrError(f"{name}: data directory {root} does not exist")
    for cand in (root, root / subdir):
        if (cand / marker).is_file():
            return cand
    raise LegrError(f"{name}: {root} is not a CIFAR python folder: no '{marker}' in it "
                    f"or in {root / subdir} (unpack the 'python version' archive there)")


def _check_size(name: str, image_size: tuple[int, int] | None) -> None:
    """CIFAR is served only at its native 32x32."""
    size = parse_image_size(name, image_size)
    if size is not None and size != CIFAR_SIZE:
        raise LegrError(f"{name}: images are 32x32; image_size={size} is not supported")


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> ArraySet:
    return ArraySet(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def load_cifar10(data_dir: str | None, val_fraction: float = 0.1, seed: int = 0,
                 image_size: tuple[int, int] | None = None) -> DataBundle:
    """CIFAR-10: 5 training batches (val carved from them) and ``test_batch``."""
    _check_size("cifar10", image_size)
    root = _resolve_dir(data_dir, "cifar10", "data_batch_1", "cifar-10-batches-py")
    paths = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
    for p in paths:
        if not p.is_file():
            raise LegrError(f"cifar10: {p} is missing (expected data_batch_1..5 and test_batch)")
    parts = [read_batch(p, "labels", 10) for p in paths]
    names = _read_names(root / "batches.meta", "label_names", 10) or CIFAR10_NAMES
    info = DataInfo(name="cifar10", num_classes=10, in_chans=3, image_size=CIFAR_SIZE,
                    mean=CIFAR10_MEAN, std=CIFAR10_STD, hflip=True, class_names=names)
    return make_bundle(info, _concat(parts[:5]), _concat(parts[5:]), val_fraction, seed)


def load_cifar100(data_dir: str | None, val_fraction: float = 0.1, seed: int = 0,
                  image_size: tuple[int, int] | None = None) -> DataBundle:
    """CIFAR-100 with fine labels: ``train`` (val carved from it) and ``test``."""
    _check_size("cifar100", image_size)
    root = _resolve_dir(data_dir, "cifar100", "train", "cifar-100-python")
    if not (root / "test").is_file():
        raise LegrError(f"cifar100: {root / 'test'} is missing (expected 'train' and 'test')")
    train = read_batch(root / "train", "fine_labels", 100)
    test = read_batch(root / "test", "fine_labels", 100)
    names = (_read_names(root / "meta", "fine_label_names", 100)
             or tuple(f"fine_{i:02d}" for i in range(100)))
    info = DataInfo(name="cifar100", num_classes=100, in_chans=3, image_size=CIFAR_SIZE,
                    mean=CIFAR100_MEAN, std=CIFAR100_STD, hflip=True, class_names=names)
    return make_bundle(info, _concat([train]), _concat([test]), val_fraction, seed)

