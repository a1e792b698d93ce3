"""The generated shapes benchmark: determinism, balance, ranges, wiring."""
import numpy as np
import pytest

import legr_edge.data.shapes as shapes
from legr_edge.data import load_dataset
from legr_edge.errors import LegrError


def test_generate_is_byte_identical_for_same_seed() -> None:
    x1, y1 = shapes.generate(40, seed=3)
    x2, y2 = shapes.generate(40, seed=3)
    assert x1.tobytes() == x2.tobytes() and np.array_equal(y1, y2)
    x3, _ = shapes.generate(40, seed=4)
    assert x1.tobytes() != x3.tobytes()


def test_generate_dtypes_ranges_and_balance() -> None:
    x, y = shapes.generate(103, seed=0)
    assert x.dtype == np.uint8 and x.shape == (103, 32, 32, 3)
    assert y.dtype == np.int64
    counts = np.bincount(y, minlength=10)
    assert counts.min() == 10 and counts.max() == 11
    assert x.min() == 0 or x.max() == 255  # noise and colours span the range
    assert 60 < x.mean() < 190
    # Images differ from each other (no degenerate rendering).
    assert len({img.tobytes() for img in x}) == 103


def test_every_class_draws_a_visible_shape() -> None:
    """Each class's SDF covers a sensible part of its box, and they differ."""
    g = np.linspace(-1.2, 1.2, 64)
    u, v = np.meshgrid(g, g)
    areas = [float((fn(u, v) < 0).mean()) for fn in shapes.SDFS]
    assert all(0.08 < a < 0.6 for a in areas), areas
    masks = [(fn(u, v) < 0) for fn in shapes.SDFS]
    for i in range(10):
        for j in range(i + 1, 10):
            assert (masks[i] != masks[j]).mean() > 0.03, (shapes.CLASS_NAMES[i], shapes.CLASS_NAMES[j])


def test_load_shapes_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "NUM_TRAIN", 200)
    monkeypatch.setattr(shapes, "NUM_TEST", 50)
    b = load_dataset("shapes", val_fraction=0.25, seed=5)
    info = b.info
    assert info.class_names == shapes.CLASS_NAMES and info.num_classes == 10
    assert (info.in_chans, info.image_size, info.hflip) == (3, (32, 32), True)
    assert len(b.train) == 150 and len(b.val) == 50 and len(b.test) == 50
    assert np.bincount(b.val.labels).tolist() == [5] * 10
    assert all(0.2 < m < 0.8 for m in info.mean) and all(0.1 < s < 0.4 for s in info.std)
    again = load_dataset("shapes", val_fraction=0.25, seed=5)
    assert np.array_equal(again.val.indices, b.val.indices)
    assert again.test.get(np.arange(50))[0].tobytes() == b.test.get(np.arange(50))[0].tobytes()


def test_shapes_full_size_is_fixed() -> None:
    assert (shapes.NUM_TRAIN, shapes.NUM_TEST) == (9000, 2000)


def test_shapes_refuses_other_image_size() -> None:
    with pytest.raises(LegrError, match="image_size"):
        load_dataset("shapes", image_size=(64, 64))
