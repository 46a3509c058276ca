"""Boxes and COCO annotation files: the round trip, and one line for each malformed field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgevit.data.boxes import as_boxes, read_coco, write_coco
from edgevit.errors import DataError


def _doc() -> dict[str, Any]:
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "sub/b.jpg", "width": 20, "height": 20},
        ],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 9, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0.5, 0, 10, 10.25]},
            {"id": 3, "image_id": 7, "category_id": 9, "bbox": [5, 5, 30, 20], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 9, "bbox": [20, 10, 5, 5]},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 2, "name": "cat"}],
    }


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_file_reads_into_boxes_per_image(tmp_path: Path) -> None:
    coco = read_coco(_write(tmp_path, _doc()))
    assert coco.files == ["a.png", "sub/b.jpg"] and coco.sizes.tolist() == [[40, 30], [20, 20]]
    assert coco.class_names == ["cat", "dog"]  # class k: the k-th smallest category id
    # image 7 (a.png): the cat box and the second dog box; the crowd region is left out
    assert coco.boxes_of(0).tolist() == [[0.5, 0, 10.5, 10.25, 0], [20, 10, 25, 15, 1]]
    assert coco.boxes_of(1).tolist() == [[1, 2, 4, 6, 1]]
    assert coco.boxes.dtype == np.float32 and coco.boxes.shape == (3, 5)


def test_written_coco_file_reads_back_the_same_boxes(tmp_path: Path) -> None:
    boxes = [as_boxes([[1, 2, 5, 9, 0], [0, 0, 32, 32, 2]]), as_boxes([]), as_boxes([[3.5, 4, 8, 8.5, 1]])]
    path = tmp_path / "annotations.json"
    write_coco(path, ["x.png", "y.png", "z.png"], [(32, 32)] * 3, boxes, ["a", "b", "c"])
    coco = read_coco(path)
    assert coco.class_names == ["a", "b", "c"] and coco.files == ["x.png", "y.png", "z.png"]
    for k, expected in enumerate(boxes):
        assert np.array_equal(coco.boxes_of(k), expected)
    assert json.loads(path.read_text())["annotations"][0]["bbox"] == [1, 2, 4, 7]  # x, y, w, h


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("annotations"), "annotations is missing"),
        (lambda d: d["images"][1].pop("file_name"), "images[1].file_name must be"),
        (
            lambda d: d["images"][0].update(file_name="../../etc/passwd"),
            "file_name '../../etc/passwd' leads out",
        ),
        (lambda d: d["images"][0].update(file_name="/abs.png"), "images[0].file_name '/abs.png' leads out"),
        (lambda d: d["images"][1].update(id=7), "images[1].id 7 is used twice"),
        (lambda d: d["images"][0].update(width=0), "images[0].width must be positive"),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), "annotations[2].bbox must be 4 numbers"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4]), "annotations[0].bbox must be 4 numbers"),
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 0, 4]),
            "annotations[1].bbox [1, 2, 0, 4] has no area",
        ),
        (lambda d: d["annotations"][1].update(bbox=[45, 2, 3, 4]), "lies outside its 40 x 30 image"),
        (lambda d: d["annotations"][3].update(image_id=5), "annotations[3].image_id 5 names no image"),
        (
            lambda d: d["annotations"][0].update(category_id=1),
            "annotations[0].category_id 1 names no category",
        ),
        (
            lambda d: d["annotations"][0].update(category_id=True),
            "annotations[0].category_id must be an integer",
        ),
        (lambda d: d["categories"][1].update(name=""), "categories[1].name must be a non-empty string"),
        (lambda d: d["categories"].append({"id": 2, "name": "x"}), "categories[2].id 2 is used twice"),
    ],
)
def test_malformed_field_is_named_in_one_line(tmp_path: Path, change: Any, field: str) -> None:
    doc = _doc()
    change(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(DataError) as info:
        read_coco(path)
    message = str(info.value)
    assert field in message and str(path) in message and "\n" not in message


def test_unreadable_annotation_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="is not valid JSON"):
        read_coco(path)
    with pytest.raises(DataError, match="the top level is not an object"):
        read_coco(_write(tmp_path, [1, 2]))
    with pytest.raises(DataError, match="is missing"):
        read_coco(tmp_path / "none.json")
