"""ImageSet types, the stratified split, val_fraction checks and load_dataset errors."""
import subprocess
import sys

import numpy as np
import pytest

from legr_edge.data import DATASETS, ArraySet, DataInfo, SubsetSet, load_dataset
from legr_edge.data.base import check_val_fraction, stratified_split
from legr_edge.errors import LegrError


def _array_set(n: int = 20) -> ArraySet:
    images = np.arange(n * 2 * 3 * 1, dtype=np.uint8).reshape(n, 2, 3, 1)
    return ArraySet(images, np.arange(n) % 4)


def test_array_set_get_returns_uint8_nhwc_and_int64() -> None:
    s = _array_set()
    x, y = s.get(np.array([3, 0, 3]))
    assert x.dtype == np.uint8 and x.shape == (3, 2, 3, 1)
    assert y.dtype == np.int64 and y.tolist() == [3, 0, 3]
    assert s.labels.dtype == np.int64 and len(s) == 20


def test_subset_set_maps_positions_into_base() -> None:
    base = _array_set()
    sub = SubsetSet(base, np.array([5, 7, 9]))
    x, y = sub.get(np.array([2, 0]))
    bx, by = base.get(np.array([9, 5]))
    assert np.array_equal(x, bx) and np.array_equal(y, by)
    assert sub.labels.tolist() == [1, 3, 1]


@pytest.mark.parametrize("bad", [np.array([20]), np.array([-1]), np.array([0.5])])
def test_get_refuses_bad_indices(bad: np.ndarray) -> None:
    with pytest.raises(IndexError):
        _array_set().get(bad)


def test_array_set_refuses_non_uint8() -> None:
    with pytest.raises(ValueError):
        ArraySet(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2))


def test_data_info_checks_lengths() -> None:
    with pytest.raises(ValueError):
        DataInfo("x", 2, 3, (4, 4), (0.5,), (0.2,), False, ("a", "b"))


def test_stratified_split_disjoint_complete_deterministic() -> None:
    labels = np.repeat(np.arange(5), [10, 20, 30, 3, 2])
    keep, held = stratified_split(labels, 0.2, seed=7)
    assert not set(keep) & set(held)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(labels)))
    keep2, held2 = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(keep, keep2) and np.array_equal(held, held2)
    _, held3 = stratified_split(labels, 0.2, seed=8)
    assert not np.array_equal(held, held3)
    # Stratified: each class gives round(0.2 * n), at least one, never all.
    assert np.bincount(labels[held], minlength=5).tolist() == [2, 4, 6, 1, 1]


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "abc", None])
def test_val_fraction_outside_open_interval_is_refused(bad: object) -> None:
    with pytest.raises(LegrError, match="val_fraction"):
        check_val_fraction(bad)  # type: ignore[arg-type]
    with pytest.raises(LegrError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)  # type: ignore[arg-type]


def test_unknown_data_set_lists_known_ones() -> None:
    with pytest.raises(LegrError) as e:
        load_dataset("mnist")
    assert "mnist" in str(e.value)
    for name in DATASETS:
        assert name in str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_data_dir_required(name: str) -> None:
    with pytest.raises(LegrError, match="--data-dir"):
        load_dataset(name)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_data_dir_is_named(name: str, tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(LegrError, match="does not exist") as e:
        load_dataset(name, str(missing))
    assert str(missing) in str(e.value)


def test_importing_data_package_needs_no_torch_pil_or_sklearn() -> None:
    code = ("import sys, legr_edge.data, legr_edge.data.cifar, legr_edge.data.shapes, "
            "legr_edge.data.digits, legr_edge.data.imagefolder\n"
            "bad = [m for m in ('torch', 'PIL', 'sklearn') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
