"""Procedural scenes with per-pixel ground truth (``source: shapes-seg`` and ``shapes-depth``).

Each scene is a ground plane that recedes towards the top of the image (depth 3–5 m at the
bottom row, 8–14 m at the top) with stripes whose period shrinks with distance, and one or two
shapes (circle, square, triangle, cross, ring) standing at 2–3.5 m, slightly tilted, drawn far to
near so near shapes hide far ones. A shape's apparent size falls with its distance and every
pixel is fogged by its depth, so a monocular model can read depth from the image. The class mask
(0 background, 1–5 the shapes) and the depth map (metres) are analytic: exact at every pixel.
Every scene is a pure function of its index and the size it is drawn at, the same on every
machine.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from edgevit.data.dataset import ImageSource, Split, split_indices, take
from edgevit.data.shapes import SHAPES, _mask

SEG_CLASSES = ("background", *SHAPES)
SIZE = 32
COUNT = 6000
_SEED = 20261130
_FOG = np.array([205.0, 210.0, 220.0])
_FOG_RANGE_M = 14.0


def render_scene(index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` drawn at ``size`` px: the image (uint8 H x W x 3), its class mask (uint8
    H x W, :data:`SEG_CLASSES`) and its depth (float32 H x W, metres)."""
    rng = np.random.default_rng([_SEED, index])
    unit = size / SIZE  # geometry is drawn in 32-px units, so every size shows the same scene
    grid = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5) / unit
    yy, xx = grid
    near, far = rng.uniform(3, 5), rng.uniform(8, 14)
    depth = far + (near - far) * (yy / SIZE) ** 0.8  # the ground plane, receding upwards
    mask = np.zeros((size, size), np.uint8)
    ground = rng.uniform(40, 180, 3)
    period = rng.uniform(1.2, 1.8)  # stripe period in metres along the ground
    stripes = (depth / period) % 1.0 < 0.5
    image = np.where(stripes[..., None], ground, ground * 0.6)
    shapes = sorted(
        ((rng.uniform(2.0, 3.5), int(rng.integers(len(SHAPES)))) for _ in range(int(rng.integers(1, 3)))),
        reverse=True,
    )
    for z, kind in shapes:  # far to near: a nearer shape paints over a farther one
        radius = 30.0 / z * rng.uniform(0.9, 1.1)
        cy, cx = rng.uniform(radius * 0.6, SIZE - radius * 0.6, 2)
        inside = _mask(SHAPES[kind], xx - cx, yy - cy, radius, rng.uniform(0, math.pi))
        tilt = rng.uniform(-0.03, 0.03, 2)  # metres per 32-px unit: a slightly tilted panel
        surface = z + tilt[0] * (xx - cx) + tilt[1] * (yy - cy)
        colour = rng.uniform(30, 255, 3)
        while np.abs(colour - ground).mean() < 60:  # every shape stands out from the ground
            colour = rng.uniform(30, 255, 3)
        shade = np.clip(1.0 - 0.05 * (yy - cy) / max(radius, 1.0), 0.7, 1.3)[..., None]
        image = np.where(inside[..., None], np.clip(colour * shade, 0, 255), image)
        depth = np.where(inside, surface, depth)
        mask[inside] = kind + 1
    fog = (1.0 - np.exp(-depth / _FOG_RANGE_M))[..., None] * 0.8
    image = image * (1 - fog) + _FOG * fog
    image += rng.normal(0, rng.uniform(2, 6), image.shape)
    picture = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return picture, mask, depth.astype(np.float32)


def _image_at(indices: np.ndarray, size: int, k: int) -> np.ndarray:
    return render_scene(int(indices[k]), size)[0]


def _target_at(indices: np.ndarray, size: int, which: int, k: int) -> np.ndarray:
    return render_scene(int(indices[k]), size)[which]


def open_scenes(
    task: str, split: Split, count: int | None = None, seed: int = 0, size: int = SIZE
) -> ImageSource:
    """The scenes of one split with their masks (``task='segmentation'``) or depth (``'depth'``)."""
    idx = take(split_indices(COUNT, split), count, seed)
    which = {"segmentation": 1, "depth": 2}[task]
    name = {"segmentation": "shapes-seg", "depth": "shapes-depth"}[task]
    return ImageSource(
        np.zeros(len(idx), np.int64),
        list(SEG_CLASSES) if task == "segmentation" else [],
        f"{name}/{split}" + (f"[{count}@{seed}]" if count else ""),
        partial(_image_at, idx, size),
        partial(_target_at, idx, size, which),
        task,
    )


def write_dense_folder(root: str | Path, count: int, size: int = SIZE, start: int = 0) -> int:
    """Write scenes ``start .. start+count-1`` in the dense on-disk format
    (:mod:`edgevit.data.dense_folder`): images, masks, depth and classes.txt; returns the count."""
    from edgevit.data.dense_folder import write_sample

    base = Path(root)
    (base / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (base / "classes.txt").write_text("\n".join(SEG_CLASSES) + "\n")
    for i in range(start, start + count):
        image, mask, depth = render_scene(i, size)
        write_sample(base, f"{i:06d}", image, mask, depth)
    return count
