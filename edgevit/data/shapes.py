"""A harder embedded dataset: procedurally drawn shapes and textures (``source: shapes``).

Ten classes, five shapes (circle, square, triangle, cross, ring) each solid or striped, drawn at a
random position, size and rotation in a random colour on a random background, with distractor
strokes and pixel noise; 32x32 RGB. Low contrast, small sizes and fine stripes make some images
genuinely ambiguous, so a small ViT stays well below 100% top-1 and quantization losses show
(unlike on digits, where INT8 top-1 is saturated). Every image is a pure function of its index:
the same on every machine, no download.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from edgevit.data.dataset import ImageSource, Split, split_indices, take

SHAPES = ("circle", "square", "triangle", "cross", "ring")
TEXTURES = ("solid", "striped")
CLASS_NAMES = [f"{s}-{t}" for s in SHAPES for t in TEXTURES]
SIZE = 32
COUNT = 6000
_SEED = 20261123


def _mask(shape: str, xx: np.ndarray, yy: np.ndarray, radius: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    u, v = xx * c + yy * s, -xx * s + yy * c
    if shape == "circle":
        return np.asarray(u**2 + v**2 <= radius**2)
    if shape == "square":
        return np.asarray(np.maximum(abs(u), abs(v)) <= radius * 0.8)
    if shape == "triangle":
        inside = np.ones_like(xx, dtype=bool)
        for k in range(3):
            a = angle + k * 2 * math.pi / 3
            inside &= xx * math.cos(a) + yy * math.sin(a) <= radius * 0.5
        return inside
    if shape == "cross":
        arm = radius * 0.32
        return np.asarray(((abs(u) <= arm) & (abs(v) <= radius)) | ((abs(v) <= arm) & (abs(u) <= radius)))
    r = np.sqrt(u**2 + v**2)  # ring
    return np.asarray((r <= radius) & (r >= radius * 0.55))


def render(index: int) -> tuple[np.ndarray, int]:
    """Image ``index`` (SIZE x SIZE x 3 uint8) and its class."""
    rng = np.random.default_rng([_SEED, index])
    label = index % len(CLASS_NAMES)
    shape, texture = SHAPES[label // 2], TEXTURES[label % 2]
    grid = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    cy, cx = rng.uniform(9, SIZE - 9, 2)
    yy, xx = grid[0] - cy, grid[1] - cx
    mask = _mask(shape, xx, yy, rng.uniform(7.0, 12.0), rng.uniform(0, math.pi))
    background = rng.uniform(40, 215, 3)
    contrast = rng.uniform(90, 170) * rng.choice([-1.0, 1.0])
    foreground = np.clip(background + contrast * rng.uniform(0.6, 1.0, 3), 0, 255)
    image = np.broadcast_to(background, (SIZE, SIZE, 3)).copy()
    if texture == "striped":
        b, period = rng.uniform(0, math.pi), rng.uniform(4.0, 6.0)
        stripes = ((grid[1] * math.cos(b) + grid[0] * math.sin(b)) / period) % 1.0 < 0.5
        image[mask & stripes] = foreground
        image[mask & ~stripes] = background + (foreground - background) * 0.25
    else:
        image[mask] = foreground
    for _ in range(int(rng.integers(0, 3))):  # distractor strokes
        x0, y0, x1, y1 = rng.uniform(0, SIZE, 4)
        t = np.linspace(0, 1, 48)
        px = np.clip((x0 + (x1 - x0) * t).astype(int), 0, SIZE - 1)
        py = np.clip((y0 + (y1 - y0) * t).astype(int), 0, SIZE - 1)
        image[py, px] = rng.uniform(0, 255, 3)
    image += rng.normal(0, rng.uniform(2, 10), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _render_at(indices: np.ndarray, k: int) -> np.ndarray:
    return render(int(indices[k]))[0]


def open_shapes(split: Split, count: int | None = None, seed: int = 0) -> ImageSource:
    """Shapes images of one split (32x32x3 uint8), each drawn when read."""
    idx = take(split_indices(COUNT, split), count, seed)
    labels = idx.astype(np.int64) % len(CLASS_NAMES)  # render()'s rule: the index picks the class
    return ImageSource(
        labels,
        list(CLASS_NAMES),
        f"shapes/{split}" + (f"[{count}@{seed}]" if count else ""),
        partial(_render_at, idx),
    )


def write_image_folder(
    root: str, split: Split = "all", count: int | None = None, size: int = SIZE, suffix: str = ".png"
) -> int:
    """Write the dataset as an ImageFolder tree (``root/<class>/<index><suffix>``); returns the
    image count. ``count`` writes images 0..count-1 instead of a split (past the embedded 6,000:
    every index draws an image); ``size`` resizes them (bilinear) for full-size benchmarks."""
    from PIL import Image

    indices = np.arange(count) if count is not None else split_indices(COUNT, split)
    base = Path(root)
    for i, index in enumerate(indices):
        image, label = render(int(index))
        folder = base / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if size != SIZE:
            picture = picture.resize((size, size), Image.Resampling.BILINEAR)
        picture.save(folder / f"{i:06d}{suffix}")
    return len(indices)
