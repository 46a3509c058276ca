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

from edgevit.data.boxes import as_boxes
from edgevit.data.dataset import ImageSource, Split, split_indices, take
from edgevit.data.shapes import SHAPES, _mask

SEG_CLASSES = ("background", *SHAPES)
DET_CLASSES = SHAPES  # detection: the objects only (box class k = SHAPES[k])
MIN_VISIBLE = (
    4  # pixels (at 32 px; scaled with the size) of a shape left visible for it to count as an object
)
SIZE = 32
COUNT = 6000
_SEED = 20261130
_FOG = np.array([205.0, 210.0, 220.0])
_FOG_RANGE_M = 14.0


def render_scene(index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` drawn at ``size`` px: the image (uint8 H x W x 3), its class mask (uint8
    H x W, :data:`SEG_CLASSES`) and its depth (float32 H x W, metres)."""
    picture, mask, depth, _ = draw_scene(index, size)
    return picture, mask, depth


def scene_boxes(index: int, size: int = SIZE) -> np.ndarray:
    """Scene ``index``'s objects at ``size`` px as boxes (:mod:`edgevit.data.boxes`): each shape's
    visible pixels (what nearer shapes leave of it), classes indexing :data:`DET_CLASSES`."""
    return draw_scene(index, size)[3]


def draw_scene(index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render_scene`'s image, mask and depth, and :func:`scene_boxes`' boxes, drawn once."""
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
    drawn: list[tuple[np.ndarray, int]] = []
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
        drawn.append((inside, kind))
    fog = (1.0 - np.exp(-depth / _FOG_RANGE_M))[..., None] * 0.8
    image = image * (1 - fog) + _FOG * fog
    image += rng.normal(0, rng.uniform(2, 6), image.shape)
    picture = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return picture, mask, depth.astype(np.float32), _visible_boxes(drawn, MIN_VISIBLE * unit**2, mask.shape)


def _visible_boxes(drawn: list[tuple[np.ndarray, int]], least: float, shape: tuple[int, ...]) -> np.ndarray:
    """The boxes of the shapes ``drawn`` far to near (each a pixel mask of ``shape`` and a shape
    index) around the pixels no nearer shape covers; a shape left with fewer than ``least`` pixels
    has none."""
    boxes: list[list[float]] = []
    covered = np.zeros(shape, dtype=bool)
    for inside, kind in reversed(drawn):  # near to far
        visible = inside & ~covered
        covered |= inside
        if int(visible.sum()) < least:
            continue
        rows, cols = np.nonzero(visible)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1, kind])
    return as_boxes(boxes)


def _image_at(indices: np.ndarray, size: int, k: int) -> np.ndarray:
    return render_scene(int(indices[k]), size)[0]


def _target_at(indices: np.ndarray, size: int, which: int, k: int) -> np.ndarray:
    return draw_scene(int(indices[k]), size)[which]


def open_scenes(
    task: str, split: Split, count: int | None = None, seed: int = 0, size: int = SIZE
) -> ImageSource:
    """The scenes of one split with their masks (``task='segmentation'``), depth (``'depth'``) or
    boxes (``'detection'``)."""
    idx = take(split_indices(COUNT, split), count, seed)
    which = {"segmentation": 1, "depth": 2, "detection": 3}[task]
    name = {"segmentation": "shapes-seg", "depth": "shapes-depth", "detection": "shapes-det"}[task]
    classes = {"segmentation": list(SEG_CLASSES), "detection": list(DET_CLASSES)}.get(task, [])
    return ImageSource(
        np.zeros(len(idx), np.int64),
        classes,
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


def write_coco_folder(root: str | Path, count: int, size: int = SIZE, start: int = 0) -> int:
    """Write scenes ``start .. start+count-1`` as a COCO detection folder
    (:mod:`edgevit.data.coco_folder`): images/ and their boxes in annotations.json; returns the count."""
    from PIL import Image

    from edgevit.data.boxes import ANNOTATIONS, write_coco

    base = Path(root)
    (base / "images").mkdir(parents=True, exist_ok=True)
    files, boxes = [], []
    for i in range(start, start + count):
        image, _, _, objects = draw_scene(i, size)
        files.append(f"{i:06d}.png")
        Image.fromarray(image).save(base / "images" / files[-1])
        boxes.append(objects)
    write_coco(base / ANNOTATIONS, files, [(size, size)] * count, boxes, DET_CLASSES)
    return count
