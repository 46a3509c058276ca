"""Detection folders in COCO format: images and their boxes (users' own data follows it).

The layout::

    root/annotations.json     the boxes, COCO format (edgevit.data.boxes)
    root/images/<file_name>   the images it names

``root/<split>/annotations.json`` with ``root/<split>/images/`` is used when that split folder
exists; otherwise the images are split by the fixed-seed fractions, as for ImageFolder sources
(``split: all`` takes every one). Only the file names and boxes are held; each image is read when
asked for, and checked against the size its annotation records.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from edgevit.data.boxes import ANNOTATIONS, CocoFile, read_coco
from edgevit.data.dataset import ImageSource, Split, select
from edgevit.data.folder import read_image
from edgevit.errors import DataError

_SPLITS = ("train", "val", "test")


def is_coco_folder(root: Path) -> bool:
    """Whether ``root`` (or one of its split folders) holds a COCO annotation file."""
    return any((base / ANNOTATIONS).is_file() for base in (root, *(root / s for s in _SPLITS)))


def open_coco_folder(root: Path, split: Split, count: int | None = None, seed: int = 0) -> ImageSource:
    """The images of ``split`` in COCO folder ``root`` with their boxes."""
    own = split != "all" and (root / split / ANNOTATIONS).is_file()
    base = root / split if own else root
    if not (base / ANNOTATIONS).is_file():
        raise DataError(
            f"data folder {root} has no {ANNOTATIONS}"
            + ("" if split == "all" else f" (nor {root / split / ANNOTATIONS})"),
            f"put the COCO boxes in {root / ANNOTATIONS}",
        )
    coco = read_coco(base / ANNOTATIONS)
    idx = select(len(coco.files), split, own, count, seed, f"data folder {base}")
    images = base / "images"
    paths = [images / coco.files[i] for i in idx]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(
            f"{missing} is missing ({base / ANNOTATIONS} names it)",
            f"put it in {images}/ or remove its entry from images",
        )
    return ImageSource(
        np.zeros(len(idx), np.int64),
        coco.class_names,
        f"{base}/{split}",
        partial(_read_at, coco, idx, paths),
        partial(_boxes_at, coco, idx),
        "detection",
    )


def _read_at(coco: CocoFile, indices: np.ndarray, paths: list[Path], k: int) -> np.ndarray:
    image = read_image(paths[k])
    width, height = (int(v) for v in coco.sizes[indices[k]])
    if image.shape[:2] != (height, width):
        raise DataError(
            f"image {paths[k]} is {image.shape[1]} x {image.shape[0]} px, "
            f"{coco.path} says {width} x {height} (images[{int(indices[k])}])",
            "fix its width and height there, or the image",
        )
    return image


def _boxes_at(coco: CocoFile, indices: np.ndarray, k: int) -> np.ndarray:
    return coco.boxes_of(int(indices[k]))
