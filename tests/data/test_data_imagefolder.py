"""The imagefolder loader on tiny images written here."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from legr_edge.data import ImageFolderSet, load_dataset
from legr_edge.errors import LegrError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png(path: Path, size: tuple[int, int] = (20, 12), colour=RED, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else 128).save(path)


def _half_half(path: Path) -> None:
    """40x20 (W x H): left half red, right half blue."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = RED
    img[:, 20:] = BLUE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_tree(root: Path) -> Path:
    for cls, n in (("cat", 6), ("ant", 5), ("bee", 4)):
        for i in range(n):
            _png(root / "train" / cls / f"{i}.png", (10 + i, 14))
    _png(root / "train" / "cat" / "g.bmp", mode="L")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    _half_half(root / "val" / "ant" / "h.PNG")
    Image.new("RGB", (16, 16), BLUE).save(root / "train" / "bee" / "j.jpg", quality=95)
    _png(root / "val" / "cat" / "0.png")
    return root


def test_imagefolder_classes_splits_and_pixels(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    b = load_dataset("imagefolder", str(root), val_fraction=0.2, seed=1, image_size=(10, 10))
    info = b.info
    assert info.class_names == ("ant", "bee", "cat")
    assert (info.num_classes, info.in_chans, info.image_size, info.hflip) == (3, 3, (10, 10), True)
    assert info.mean == (0.485, 0.456, 0.406)
    assert len(b.train) + len(b.val) == 17 and len(b.test) == 2
    assert sorted(set(b.val.labels.tolist())) == [0, 1, 2]
    assert not set(b.train.indices.tolist()) & set(b.val.indices.tolist())
    x, y = b.train.get(np.arange(len(b.train)))
    assert x.dtype == np.uint8 and x.shape == (len(b.train), 10, 10, 3) and y.dtype == np.int64
    tx, ty = b.test.get(np.array([0, 1]))
    assert ty.tolist() == [0, 2]
    # Shorter side 20 -> 10, width 40 -> 20, centre crop keeps 5 red + 5 blue columns.
    assert tx[0, 5, 1].tolist() == list(RED) and tx[0, 5, 8].tolist() == list(BLUE)
    assert tx[1, 3, 3].tolist() == list(RED)


def test_imagefolder_default_size_is_224(tmp_path: Path) -> None:
    b = load_dataset("imagefolder", str(make_tree(tmp_path / "d")))
    assert b.info.image_size == (224, 224)
    assert b.test.get(np.array([1]))[0].shape == (1, 224, 224, 3)


def test_grey_and_jpeg_become_rgb(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    s = ImageFolderSet([root / "train" / "cat" / "g.bmp", root / "train" / "bee" / "j.jpg"],
                       np.array([2, 1]), (8, 8))
    x, y = s.get(np.array([0, 1]))
    assert x.shape == (2, 8, 8, 3) and y.tolist() == [2, 1]
    assert np.all(x[0] == 128) and abs(int(x[1, 4, 4, 2]) - 255) < 8


def test_missing_train_folder(tmp_path: Path) -> None:
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(LegrError, match="train"):
        load_dataset("imagefolder", str(tmp_path))


def test_missing_val_folder(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "0.png")
    _png(tmp_path / "train" / "a" / "1.png")
    with pytest.raises(LegrError, match="val"):
        load_dataset("imagefolder", str(tmp_path))


def test_no_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "loose.png")
    with pytest.raises(LegrError, match="no class folders"):
        load_dataset("imagefolder", str(tmp_path))


def test_empty_class_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "readme.txt").write_text("x")
    with pytest.raises(LegrError, match="holds no images") as e:
        load_dataset("imagefolder", str(root))
    assert "dog" in str(e.value)


def test_val_class_missing_from_train(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d")
    _png(root / "val" / "zebra" / "0.png")
    with pytest.raises(LegrError, match="zebra"):
        load_dataset("imagefolder", str(root))


def test_corrupt_image_is_named_on_get(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not really a png")
    s = ImageFolderSet([bad], np.array([0]), (8, 8))
    with pytest.raises(LegrError, match="bad.png"):
        s.get(np.array([0]))


def test_bad_image_size(tmp_path: Path) -> None:
    with pytest.raises(LegrError, match="image_size"):
        load_dataset("imagefolder", str(make_tree(tmp_path / "d")), image_size=(0, 5))
