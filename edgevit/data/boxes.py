"""Object boxes, the ground truth of detection, and COCO-format annotation files.

An image's boxes are a float32 N x 5 array: ``x0, y0, x1, y1`` in pixels of the image as stored
(x to the right, y down; the far edges are exclusive, so the box of pixel (row r, column c) alone
is ``[c, r, c + 1, r + 1]``) and the class, an index into the source's class names.

A COCO annotation file (``annotations.json``) holds, as COCO writes it::

    {"images":      [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}, ...],
     "annotations": [{"image_id": 1, "category_id": 3, "bbox": [x, y, w, h]}, ...],
     "categories":  [{"id": 3, "name": "circle"}, ...]}

Class k is the category with the k-th smallest id. An annotation with ``"iscrowd": 1`` marks a
crowd, not an object, and is left out. Every field is checked when the file is read, and a bad
one raises :class:`~edgevit.errors.DataError` naming the file and the field (``annotations[3].bbox``).
The boxes of all images are held as one M x 5 array (20 bytes a box), never the images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgevit.errors import DataError
from edgevit.fileio import atomic_write_json

ANNOTATIONS = "annotations.json"
_FIX = "see COCO's format: images, annotations and categories lists (README, Data with boxes)"


def as_boxes(rows: Any) -> np.ndarray:
    """``rows`` (x0, y0, x1, y1, class each) as a float32 N x 5 box array."""
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


@dataclass(frozen=True)
class CocoFile:
    """A COCO annotation file, read and checked."""

    path: Path
    files: list[str]  # each image's file_name, in the file's order
    sizes: np.ndarray  # n x 2: each image's width and height
    class_names: list[str]  # the categories' names, by id
    boxes: np.ndarray  # M x 5: every image's boxes, image by image
    starts: np.ndarray  # n + 1: image k's boxes are boxes[starts[k]:starts[k + 1]]

    def boxes_of(self, k: int) -> np.ndarray:
        """Image ``k``'s boxes (N x 5)."""
        return self.boxes[self.starts[k] : self.starts[k + 1]]


class _Fields:
    """Reads one file's fields, raising one line that names the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, problem: str, fix: str = _FIX) -> DataError:
        return DataError(f"{self.path}: {field} {problem}", fix)

    def items(self, doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = doc.get(key)
        if not isinstance(value, list):
            raise self.fail(key, "is missing or not a list")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", "is not an object")
        return value

    def integer(self, item: dict[str, Any], field: str, where: str) -> int:
        value = item.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where}.{field}", f"must be an integer (found {value!r})")
        return value

    def text(self, item: dict[str, Any], field: str, where: str) -> str:
        value = item.get(field)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{field}", f"must be a non-empty string (found {value!r})")
        return value


def read_coco(path: Path) -> CocoFile:
    """The COCO annotation file at ``path``, checked field by field (see the module)."""
    fields = _Fields(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing", f"write the boxes to {path.name} in COCO format") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})", "fix or rewrite the file") from None
    if not isinstance(doc, dict):
        raise fields.fail("the top level", "is not an object")

    categories = fields.items(doc, "categories")
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        cid = fields.integer(cat, "id", f"categories[{i}]")
        if cid in names:
            raise fields.fail(f"categories[{i}].id", f"{cid} is used twice", "give each category its own id")
        names[cid] = fields.text(cat, "name", f"categories[{i}]")
    if not names:
        raise fields.fail("categories", "is empty", "list the object classes")
    class_of = {cid: k for k, cid in enumerate(sorted(names))}

    images = fields.items(doc, "images")
    index: dict[int, int] = {}
    files: list[str] = []
    sizes = np.zeros((len(images), 2), np.int64)
    for i, img in enumerate(images):
        iid = fields.integer(img, "id", f"images[{i}]")
        if iid in index:
            raise fields.fail(f"images[{i}].id", f"{iid} is used twice", "give each image its own id")
        index[iid] = i
        name = fields.text(img, "file_name", f"images[{i}]")
        parts = PurePosixPath(name.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts or ":" in name:
            raise fields.fail(
                f"images[{i}].file_name", f"{name!r} leads out of the images folder", "name a file inside it"
            )
        files.append(parts.as_posix())
        for k, key in enumerate(("width", "height")):
            sizes[i, k] = fields.integer(img, key, f"images[{i}]")
            if sizes[i, k] <= 0:
                raise fields.fail(f"images[{i}].{key}", f"must be positive (found {sizes[i, k]})")

    per_image: list[list[list[float]]] = [[] for _ in images]
    for i, ann in enumerate(fields.items(doc, "annotations")):
        where = f"annotations[{i}]"
        iid = fields.integer(ann, "image_id", where)
        if iid not in index:
            raise fields.fail(f"{where}.image_id", f"{iid} names no image", "use an id from images")
        cid = fields.integer(ann, "category_id", where)
        if cid not in class_of:
            raise fields.fail(f"{where}.category_id", f"{cid} names no category", "use an id from categories")
        if ann.get("iscrowd", 0) not in (0, 1, False, True):
            raise fields.fail(f"{where}.iscrowd", f"must be 0 or 1 (found {ann.get('iscrowd')!r})")
        box = ann.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            raise fields.fail(f"{where}.bbox", f"must be 4 numbers [x, y, width, height] (found {box!r})")
        x, y, w, h = (float(v) for v in box)
        width, height = sizes[index[iid]]
        if w <= 0 or h <= 0:
            raise fields.fail(f"{where}.bbox", f"{box} has no area: width and height must be positive")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise fields.fail(f"{where}.bbox", f"{box} lies outside its {width} x {height} image")
        if ann.get("iscrowd", 0):
            continue  # a crowd region, not an object
        per_image[index[iid]].append([x, y, x + w, y + h, class_of[cid]])

    counts = np.array([len(b) for b in per_image], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    boxes = as_boxes([row for rows in per_image for row in rows])
    return CocoFile(path, files, sizes, [names[c] for c in sorted(names)], boxes, starts)


def coco_annotations(boxes: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """COCO annotation entries for each image's boxes (N x 5 arrays): image k has id k + 1,
    class c category id c + 1, and each box's area is its own."""
    annotations: list[dict[str, Any]] = []
    for k, rows in enumerate(boxes):
        for x0, y0, x1, y1, cls in np.asarray(rows, dtype=np.float64).reshape(-1, 5):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": k + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    return annotations


def coco_categories(class_names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO category entries: class k has id k + 1."""
    return [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]


def write_coco(
    path: Path,
    files: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    boxes: Sequence[np.ndarray],
    class_names: Sequence[str],
) -> None:
    """Write ``boxes`` (one N x 5 array per image in ``files``, of ``sizes`` width x height) as a
    COCO annotation file at ``path`` (atomically); category ids are 1 + the class index."""
    if not len(files) == len(sizes) == len(boxes):
        raise ValueError(f"{len(files)} files, {len(sizes)} sizes and {len(boxes)} box arrays")
    images = [
        {"id": k + 1, "file_name": name, "width": int(width), "height": int(height)}
        for k, (name, (width, height)) in enumerate(zip(files, sizes, strict=True))
    ]
    doc = {
        "images": images,
        "annotations": coco_annotations(boxes),
        "categories": coco_categories(class_names),
    }
    atomic_write_json(path, doc)
