"""The embedded digits data set."""
import numpy as np
import pytest

from legr_edge.data import DATASETS, load_dataset
from legr_edge.data.digits import load_raw, resize_bilinear
from legr_edge.errors import LegrError


@pytest.fixture(scope="module")
def bundle():
    return load_dataset("digits")


def test_digits_is_default_and_embedded() -> None:
    assert DATASETS[0] == "digits"
    images, labels = load_raw()
    assert images.shape == (1797, 8, 8) and images.max() == 16
    assert np.bincount(labels).min() >= 170


def test_digits_shapes_dtypes_and_ranges(bundle) -> None:
    info = bundle.info
    assert (info.num_classes, info.in_chans, info.image_size, info.hflip) == (10, 1, (32, 32), False)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797
    assert abs(len(bundle.test) - 0.2 * 1797) < 10
    x, y = bundle.train.get(np.arange(len(bundle.train)))
    assert x.dtype == np.uint8 and x.shape == (len(bundle.train), 32, 32, 1)
    assert y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    assert x.min() == 0 and x.max() >= 250
    assert 0.1 < info.mean[0] < 0.6 and 0.1 < info.std[0] < 0.6


def test_val_is_disjoint_deterministic_and_seeded(bundle) -> None:
    train_idx, val_idx = bundle.train.indices, bundle.val.indices
    assert bundle.train.base is bundle.val.base
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert abs(len(val_idx) - 0.1 * len(bundle.train.base)) <= 10
    again = load_dataset("digits", seed=0)
    assert np.array_equal(again.val.indices, val_idx)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.val.indices, val_idx)
    # The test split is fixed, whatever the seed.
    assert np.array_equal(other.test.get(np.arange(5))[0], bundle.test.get(np.arange(5))[0])


def test_digits_other_image_size() -> None:
    b = load_dataset("digits", image_size=(16, 20))
    assert b.info.image_size == (16, 20)
    assert b.test.get(np.array([0]))[0].shape == (1, 16, 20, 1)


@pytest.mark.parametrize("bad", [(4, 4), (32,), "big", (0, 32)])
def test_digits_bad_image_size(bad: object) -> None:
    with pytest.raises(LegrError, match="image_size"):
        load_dataset("digits", image_size=bad)  # type: ignore[arg-type]


def test_resize_bilinear_keeps_constants_and_identity() -> None:
    const = np.full((2, 8, 8), 7.0)
    assert np.allclose(resize_bilinear(const, (32, 32)), 7.0)
    img = np.random.default_rng(0).random((1, 8, 8))
    assert np.allclose(resize_bilinear(img, (8, 8)), img)
    up = resize_bilinear(img, (32, 32))
    assert up.min() >= img.min() - 1e-12 and up.max() <= img.max() + 1e-12
