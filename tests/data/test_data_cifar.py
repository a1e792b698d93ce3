"""CIFAR loaders on small CIFAR-format folders written here, and the safe unpickler."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from legr_edge.data import load_dataset
from legr_edge.data.cifar import safe_load
from legr_edge.errors import LegrError


def _images(n: int, start: int) -> np.ndarray:
    """(n, 3072) uint8 rows whose channel c holds the value (start + i) * 3 + c."""
    vals = (np.arange(start, start + n)[:, None] * 3 + np.arange(3)[None, :]) % 256
    return np.repeat(vals, 1024, axis=1).astype(np.uint8)


def _dump(path: Path, obj: object, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4, str_keys: bool = False) -> Path:
    """A CIFAR-10 folder: 5 training batches of ``per_batch`` images and a test batch."""
    root.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    protocol = 5 if str_keys else 2
    for b in range(1, 7):
        n = per_batch if b < 6 else 6
        labels = [int(i % 10) for i in range((b - 1) * per_batch, (b - 1) * per_batch + n)]
        batch = {key("batch_label"): b"batch", key("labels"): labels,
                 key("data"): _images(n, (b - 1) * per_batch),
                 key("filenames"): [b"f%d.png" % i for i in range(n)]}
        _dump(root / (f"data_batch_{b}" if b < 6 else "test_batch"), batch, protocol)
    names = [f"name{i}".encode() for i in range(10)]
    _dump(root / "batches.meta", {key("label_names"): names, key("num_vis"): 3072}, protocol)
    return root


def write_cifar100(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 300), ("test", 50)):
        _dump(root / split, {b"data": _images(n, 0), b"fine_labels": list(np.arange(n) % 100),
                             b"coarse_labels": [0] * n}, protocol=2)
    _dump(root / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)]})
    return root


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10_loads_nhwc_labels_and_names(tmp_path: Path, str_keys: bool) -> None:
    root = write_cifar10(tmp_path / "c10", per_batch=20, str_keys=str_keys)
    b = load_dataset("cifar10", str(root), val_fraction=0.2, seed=3)
    info = b.info
    assert (info.num_classes, info.in_chans, info.image_size, info.hflip) == (10, 3, (32, 32), True)
    assert info.class_names[0] == "name0" and len(info.mean) == 3
    assert len(b.train) + len(b.val) == 100 and len(b.test) == 6
    assert len(b.val) == 20
    x, y = b.test.get(np.arange(6))
    assert x.dtype == np.uint8 and x.shape == (6, 32, 32, 3) and y.dtype == np.int64
    # Test image i was written with channel c equal to (100 + i) * 3 + c everywhere.
    assert np.array_equal(x[:, 5, 7, :], ((100 + np.arange(6))[:, None] * 3 + np.arange(3)) % 256)
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    assert not set(b.train.indices.tolist()) & set(b.val.indices.tolist())
    again = load_dataset("cifar10", str(root), val_fraction=0.2, seed=3)
    assert np.array_equal(again.val.indices, b.val.indices)


def test_cifar_rows_are_chw_row_major(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c")
    chw = np.stack([np.add.outer(np.arange(32), np.zeros(32)),      # channel 0: row
                    np.add.outer(np.zeros(32), np.arange(32)),      # channel 1: column
                    np.full((32, 32), 200)]).astype(np.uint8)
    data = _images(4, 0)
    data[2] = chw.reshape(-1)
    _dump(root / "data_batch_1", {b"data": data, b"labels": [0, 1, 2, 3]})
    b = load_dataset("cifar10", str(root))
    x, _ = b.train.base.get(np.array([2]))
    assert x[0, 9, 4].tolist() == [9, 4, 200] and x[0, 31, 0].tolist() == [31, 0, 200]


def test_cifar10_parent_folder_and_missing_meta(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    b = load_dataset("cifar10", str(tmp_path))
    assert b.info.class_names[0] == "airplane"


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    b = load_dataset("cifar100", str(write_cifar100(tmp_path / "c100")))
    assert b.info.num_classes == 100 and b.info.class_names[99] == "c99"
    assert len(b.train) + len(b.val) == 300 and len(b.test) == 50
    assert sorted(set(b.val.labels.tolist())) == list(range(100))
    assert b.test.get(np.array([49]))[1].tolist() == [49]


def test_cifar10_missing_first_batch(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(LegrError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path / "x"))


def test_cifar10_missing_later_batch(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c")
    (root / "data_batch_4").unlink()
    with pytest.raises(LegrError, match="data_batch_4"):
        load_dataset("cifar10", str(root))


def test_cifar100_missing_test(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "c")
    (root / "test").unlink()
    with pytest.raises(LegrError, match="test"):
        load_dataset("cifar100", str(root))


@pytest.mark.parametrize("content, match", [
    ([1, 2, 3], "not a dict"),
    ({b"labels": [0]}, "'data' missing"),
    ({b"data": _images(2, 0)}, "'labels' missing"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "uint8 \\(N, 3072\\)"),
    ({b"data": _images(2, 0).astype(np.float32), b"labels": [0, 1]}, "float32"),
    ({b"data": _images(2, 0), b"labels": [0]}, "2 integer labels"),
    ({b"data": _images(2, 0), b"labels": [0, 10]}, "outside 0..9"),
])
def test_cifar10_wrong_format_names_file_and_key(tmp_path: Path, content, match) -> None:
    root = write_cifar10(tmp_path / "c")
    _dump(root / "data_batch_2", content)
    with pytest.raises(LegrError, match=match) as e:
        load_dataset("cifar10", str(root))
    assert "data_batch_2" in str(e.value)


def test_not_a_pickle_is_refused(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c")
    (root / "test_batch").write_bytes(b"\x89PNG not a pickle at all")
    with pytest.raises(LegrError, match="test_batch"):
        load_dataset("cifar10", str(root))


class _Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    root = write_cifar10(tmp_path / "c")
    _dump(root / "data_batch_1", {b"data": _images(4, 0), b"labels": [0, 1, 2, 3],
                                  b"x": _Evil(marker)}, protocol)
    with pytest.raises(LegrError, match="refusing to unpickle .*system") as e:
        load_dataset("cifar10", str(root))
    assert "data_batch_1" in str(e.value)
    assert not marker.exists()


def test_safe_load_refuses_builtins(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    _dump(path, {b"data": _EvalEvil()})
    with pytest.raises(LegrError, match="refusing to unpickle .*eval"):
        safe_load(path)


def test_cifar_refuses_other_image_size(tmp_path: Path) -> None:
    with pytest.raises(LegrError, match="image_size"):
        load_dataset("cifar10", str(write_cifar10(tmp_path / "c")), image_size=(64, 64))
