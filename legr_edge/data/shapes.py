"""``shapes``: a procedurally generated 10-class benchmark (32x32 RGB, no download).

Each image holds one main shape of its class, drawn anti-aliased from a signed
distance function near the image centre (within +-5 px), at a random scale
(radius 6..12 px), rotation, slight anisotropy and colour, over a cluttered
background: a tinted grey with a colour ramp, a faint sinusoidal texture, up to
five distractors (small discs, squares and line segments, some in front of the
shape) and pixel noise. Colour carries no information about the class; the
shape differs from its background mainly in brightness, by a varying amount.
(A wide range of background brightness kept SGD at chance for many epochs, so
the background brightness range is deliberately narrow.)

The classes are distinct under rotation and mirroring (no square/diamond or
plus/X pairs) but some are close at 32x32 (circle/ellipse, square/stripes,
ring/crescent), which with the clutter keeps CNNs from saturating. Calibration
(1 CPU thread, plain CIFAR ResNet-20, SGD lr 0.1 cosine, batch 128, crop+flip):
see ``CALIBRATION`` below.

The set is fixed: 9000 training images (the validation part is carved from
them by the user's seed) and 2000 test images, generated from fixed seeds with
numpy only, in chunks, in a few seconds. Same seed and count give byte-identical
arrays on a given platform and numpy version.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from legr_edge.data.base import ArraySet, DataBundle, DataInfo, make_bundle, parse_image_size
from legr_edge.errors import LegrError

log = logging.getLogger(__name__)

SIZE = 32
NUM_TRAIN = 9000
NUM_TEST = 2000
TRAIN_SEED = 1001
TEST_SEED = 2002
CHUNK = 1000

# Difficulty knobs (calibrated; changing any changes the data set).
RADIUS = (6.0, 12.0)          # main shape radius, px
CENTER_JITTER = 5.0           # max offset of the shape's centre from the image centre, px
CONTRAST = (45.0, 170.0)      # RGB distance of the shape's colour from the background under it
BACKGROUND_GREY = (100.0, 160.0)  # background brightness range (wide ranges stall SGD early on)
BACKGROUND_TINT = 15.0        # sigma of the background's per-channel colour tint
GRADIENT_MAX = 60.0           # per-channel background ramp amplitude
TEXTURE_MAX = 18.0            # background sinusoid amplitude
NOISE = (3.0, 22.0)           # per-image pixel noise sigma
HUE_MIX = (1.0, 0.35)         # grey (brightness) vs random-hue parts of the shape's colour step
DISTRACTORS = (2, 3)          # distractor slots behind and in front of the shape

# Measured once with this exact data (train 8100 / val 900 with seed 0, test 2000):
# plain CIFAR ResNet-20 (3x3 basic blocks, 1x1 projection shortcuts), SGD momentum
# 0.9 nesterov, lr 0.1 cosine per step, weight decay 5e-4, batch 128, random crop
# (4 px zero padding) + horizontal flip, 15 epochs, torch 2.13 CPU, 1 thread.
CALIBRATION = {
    "resnet20 widths 16/32/64": {"val": 0.906, "test": 0.901, "wall_s": 282},
    "resnet20 widths 8/16/32": {"val": 0.866, "test": 0.859, "wall_s": 135},
    "resnet20 widths 4/8/16": {"val": 0.741, "test": 0.737, "wall_s": 104},
}

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring",
               "star", "ellipse", "crescent", "corner", "stripes")

Sdf = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- signed distance functions in shape units (the shape spans about [-1, 1]) ---

def _box(u: np.ndarray, v: np.ndarray, bx: float, by: float,
         cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    qx, qy = np.abs(u - cx) - bx, np.abs(v - cy) - by
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _box(u, v, 0.8, 0.8)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1.1: the largest of the three edge distances.
    d = v - 0.55
    for ang in (np.pi / 6 + np.pi, -np.pi / 6):
        d = np.maximum(d, u * np.cos(ang) + v * np.sin(ang) - 0.55)
    return d


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.minimum(_box(u, v, 1.0, 0.3), _box(u, v, 0.3, 1.0))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.75) - 0.25


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: the boundary radius zig-zags between 0.45 and 1.05 with angle.
    phase = (np.arctan2(v, u) * (5 / (2 * np.pi))) % 1.0
    tri = np.abs(phase - 0.5) * 2  # 1 at the tips, 0 between them
    return (np.hypot(u, v) - (0.45 + 0.6 * tri)) * 0.6


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.hypot(u, v / 0.5) - 1.0) * 0.5


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.hypot(u, v) - 1.0, 0.85 - np.hypot(u - 0.55, v))


def _corner(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.minimum(_box(u, v, 0.85, 0.25, 0.0, 0.6), _box(u, v, 0.25, 0.85, -0.6, 0.0))


def _stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bars = np.abs(((v + 0.9) % 0.6) - 0.3) - 0.15  # three bars 0.3 wide, 0.3 apart
    return np.maximum(_box(u, v, 0.85, 0.85), -bars)


SDFS: tuple[Sdf, ...] = (_circle, _square, _triangle, _cross, _ring,
                         _star, _ellipse, _crescent, _corner, _stripes)


# --- rendering ---

def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (1, SIZE, SIZE)."""
    c = np.arange(SIZE, dtype=np.float64) + 0.5
    return c[None, :, None] + 0 * c[None, None, :], 0 * c[None, :, None] + c[None, None, :]


def _local(cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray,
           stretch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape coordinates (u, v) of every pixel for per-image placements (N,) -> (N, S, S)."""
    gy, gx = _grid()
    dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    u = (cos * dx + sin * dy) / (r * stretch[:, None, None])
    v = (-sin * dx + cos * dy) / (r / stretch[:, None, None])
    return u, v


def _coverage(sdf_shape_units: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a distance in shape units."""
    return np.clip(0.5 - sdf_shape_units * radius[:, None, None], 0.0, 1.0)


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend one colour per image (N, 3) into canvas (N, S, S, 3) in place."""
    a = alpha[..., None]
    canvas *= 1 - a
    canvas += a * colour[:, None, None, :]


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Base colour + linear gradient + faint sinusoidal texture, (n, S, S, 3) in 0..255."""
    gy, gx = _grid()
    base = rng.uniform(*BACKGROUND_GREY, (n, 1)) + rng.normal(0, BACKGROUND_TINT, (n, 3))
    gdir = rng.uniform(0, 2 * np.pi, n)
    gamp = rng.uniform(0, GRADIENT_MAX, (n, 3)) * rng.choice([-1, 1], (n, 3))
    ramp = ((np.cos(gdir)[:, None, None] * (gx - 16) + np.sin(gdir)[:, None, None] * (gy - 16)) / 32)
    tdir = rng.uniform(0, np.pi, n)
    tfreq = rng.uniform(0.3, 1.3, n)
    tamp = rng.uniform(0, TEXTURE_MAX, n)
    wave = np.sin((np.cos(tdir)[:, None, None] * gx + np.sin(tdir)[:, None, None] * gy)
                  * tfreq[:, None, None] + rng.uniform(0, 2 * np.pi, n)[:, None, None])
    return (base[:, None, None, :] + ramp[..., None] * gamp[:, None, None, :]
            + (wave * tamp[:, None, None])[..., None])


def _contrasting(rng: np.random.Generator, ref: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Colours (n, 3) at a random distance in [lo, hi] from ``ref`` (n, 3), kept in 0..255.

    The step is mostly along grey (lighter or darker, at random) with a random hue
    component, so shapes differ from their background mainly in brightness.
    """
    n = len(ref)
    sign = np.where(ref.mean(axis=1) > 127.5, -1.0, 1.0) * rng.choice([1.0, -1.0], n, p=[0.8, 0.2])
    direction = sign[:, None] * HUE_MIX[0] / np.sqrt(3) + rng.normal(size=(n, 3)) * HUE_MIX[1]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-9
    colour = ref + direction * rng.uniform(lo, hi, (n, 1))
    # Where clipping would kill the contrast, mirror the step to the other side.
    flip = (colour < 0) | (colour > 255)
    colour = np.where(flip, ref - (colour - ref), colour)
    return np.clip(colour, 0, 255)


def _distractors(rng: np.random.Generator, canvas: np.ndarray, count: int) -> None:
    """Paint ``count`` small random discs, squares or line segments on each image."""
    n = len(canvas)
    for _ in range(count):
        keep = rng.random(n) < 0.75  # not every image gets every distractor
        kind = rng.integers(0, 3, n)
        radius = rng.uniform(1.5, 3.5, n)
        u, v = _local(rng.uniform(0, SIZE, n), rng.uniform(0, SIZE, n), radius,
                      rng.uniform(0, np.pi, n), np.ones(n))
        length = rng.uniform(2.0, 4.5, n)[:, None, None]
        sdf = np.where(kind[:, None, None] == 0, np.hypot(u, v) - 1.0,
                       np.where(kind[:, None, None] == 1, _box(u, v, 0.8, 0.8),
                                _box(u, v, length, 0.25)))
        alpha = _coverage(sdf, radius) * keep[:, None, None]
        _paint(canvas, alpha, rng.uniform(0, 255, (n, 3)))


def _render_chunk(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Images uint8 (n, S, S, 3) for ``labels`` (n,)."""
    n = len(labels)
    canvas = _background(rng, n)
    _distractors(rng, canvas, DISTRACTORS[0])
    radius = rng.uniform(*RADIUS, n)
    cx = SIZE / 2 + rng.uniform(-CENTER_JITTER, CENTER_JITTER, n)
    cy = SIZE / 2 + rng.uniform(-CENTER_JITTER, CENTER_JITTER, n)
    u, v = _local(cx, cy, radius, rng.uniform(0, 2 * np.pi, n), rng.uniform(0.85, 1.15, n))
    sdf = np.empty_like(u)
    for cls, fn in enumerate(SDFS):
        sel = labels == cls
        if sel.any():
            sdf[sel] = fn(u[sel], v[sel])
    ref = canvas[np.arange(n), np.clip(cy, 0, SIZE - 1).astype(int),
                 np.clip(cx, 0, SIZE - 1).astype(int)]
    _paint(canvas, _coverage(sdf, radius), _contrasting(rng, ref, *CONTRAST))
    _distractors(rng, canvas, DISTRACTORS[1])
    canvas += rng.normal(size=canvas.shape) * rng.uniform(*NOISE, (n, 1, 1, 1))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 (n, 32, 32, 3) and balanced labels int64 (n,) from ``seed``.

    Labels cycle through the classes and are then shuffled, so each class has
    ``n // 10`` or one more images. Deterministic: same (n, seed), same bytes.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        images[start:stop] = _render_chunk(rng, labels[start:stop])
    return images, labels


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std on the [0, 1] scale, rounded (deterministic)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return (tuple(round(float(m), 4) for m in x.mean(0)),
            tuple(round(float(s), 4) for s in x.std(0)))


def load_shapes(val_fraction: float = 0.1, seed: int = 0,
                image_size: tuple[int, int] | None = None) -> DataBundle:
    """The fixed shapes bundle: 9000 training images (val carved by ``seed``), 2000 test."""
    size = parse_image_size("shapes", image_size)
    if size is not None and size != (SIZE, SIZE):
        raise LegrError(f"shapes: images are {SIZE}x{SIZE}; image_size={size} is not supported")
    train_x, train_y = generate(NUM_TRAIN, TRAIN_SEED)
    test_x, test_y = generate(NUM_TEST, TEST_SEED)
    mean, std = _channel_stats(train_x)
    info = DataInfo(name="shapes", num_classes=len(CLASS_NAMES), in_chans=3,
                    image_size=(SIZE, SIZE), mean=mean, std=std, hflip=True,
                    class_names=CLASS_NAMES)
    return make_bundle(info, ArraySet(train_x, train_y), ArraySet(test_x, test_y),
                       val_fraction, seed)
