"""COCO detection folders written by hand: they load, split, stream, and refuse bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit.data import DataSpec, open_data
from edgevit.data.source import require_task
from edgevit.errors import DataError


def _folder(root: Path) -> Path:
    """3 images, 5 boxes, 2 categories: as a user would write it."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"street.png": (48, 32), "dog.jpg": (40, 40), "two.png": (64, 48)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
    doc = {
        "images": [
            {"id": i + 10, "file_name": n, "width": w, "height": h}
            for i, (n, (w, h)) in enumerate(sizes.items())
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2, 3, 20, 10]},
            {"id": 2, "image_id": 10, "category_id": 2, "bbox": [30, 4, 10, 20]},
            {"id": 3, "image_id": 11, "category_id": 2, "bbox": [0, 0, 40, 40]},
            {"id": 4, "image_id": 12, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"id": 5, "image_id": 12, "category_id": 1, "bbox": [40, 20, 20, 20]},
        ],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "dog"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_hand_written_coco_folder_loads_with_its_boxes(tmp_path: Path) -> None:
    source = open_data(DataSpec(source=str(_folder(tmp_path / "det")), split="all"))
    assert source.task == "detection" and source.class_names == ["car", "dog"] and len(source) == 3
    assert source.read(2).shape == (48, 64, 3)
    assert source.read_target(0).tolist() == [[2, 3, 22, 13, 0], [30, 4, 40, 24, 1]]
    assert sum(len(source.read_target(k)) for k in range(3)) == 5
    first = source.sha256()
    # the hash covers the boxes
    doc = json.loads((tmp_path / "det/annotations.json").read_text())
    doc["annotations"][0]["bbox"] = [2, 3, 21, 10]
    (tmp_path / "det/annotations.json").write_text(json.dumps(doc))
    assert open_data(DataSpec(source=str(tmp_path / "det"), split="all")).sha256() != first


def test_split_folders_are_used_when_present(tmp_path: Path) -> None:
    _folder(tmp_path / "det" / "test")
    source = open_data(DataSpec(source=str(tmp_path / "det"), split="test"))
    assert len(source) == 3 and source.description.endswith("test/test")
    with pytest.raises(DataError, match=r"has no annotations\.json"):
        open_data(DataSpec(source=str(tmp_path / "det"), split="train"))


def test_bad_folder_contents_are_one_line(tmp_path: Path) -> None:
    root = _folder(tmp_path / "det")
    (root / "images" / "dog.jpg").unlink()
    with pytest.raises(DataError, match=r"dog.jpg is missing \(.*annotations.json names it\)"):
        open_data(DataSpec(source=str(root), split="all"))
    Image.new("RGB", (41, 40)).save(root / "images" / "dog.jpg")
    source = open_data(DataSpec(source=str(root), split="all"))
    with pytest.raises(DataError, match=r"is 41 x 40 px, .* says 40 x 40 \(images\[1\]\)"):
        source.read(1)
    doc = json.loads((root / "annotations.json").read_text())
    doc["annotations"][4]["bbox"] = [40, 20, -1, 20]
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotations.json: annotations\[4\].bbox .* has no area"):
        open_data(DataSpec(source=str(root), split="all"))


def test_a_detection_source_is_refused_for_another_task(tmp_path: Path) -> None:
    source = open_data(DataSpec(source="shapes-det", split="test", count=2))
    refused = r"data\.evaluation: shapes-det/test.* is for detection, the model for classification"
    with pytest.raises(DataError, match=refused):
        require_task(source, "classification", "data.evaluation")


def test_boxes_follow_the_resize_and_crop_by_hand() -> None:
    from edgevit.data.transforms import MAX_BOXES, preprocess_boxes
    from edgevit.models.config import ModelConfig

    cfg = ModelConfig(architecture="x", num_classes=2, input_size=(3, 32, 32))
    # 64 x 48 -> resized to 43 x 32 (the shorter side to 32), then 5 px cropped on the left
    boxes = [[8, 6, 40, 30, 1], [60, 0, 64, 10, 0], [0, 0, 8, 8, 0]]
    out = preprocess_boxes(np.array(boxes, np.float32), (64, 48), cfg, "image 0")
    assert out.shape == (MAX_BOXES, 5) and out.dtype == np.float32
    # the second box falls in the crop, the third keeps 0.375 px: both dropped; the rest is padding
    assert out[0].tolist() == pytest.approx([8 * 43 / 64 - 5, 4, 40 * 43 / 64 - 5, 20, 1])
    assert (out[1:] == -1).all()
    with pytest.raises(DataError, match=r"image 3 has 101 boxes, more than 100"):
        preprocess_boxes(np.tile([[0, 0, 10, 10, 0]], (101, 1)), (32, 32), cfg, "image 3")


def test_boxes_stream_like_they_are_held(tmp_path: Path) -> None:
    from edgevit.data.stream import Images
    from edgevit.models.config import ModelConfig

    source = open_data(DataSpec(source=str(_folder(tmp_path / "det")), split="all"))
    cfg = ModelConfig(architecture="x", num_classes=2, input_size=(3, 32, 32))
    held = Images(source, cfg, cache_bytes=2**30)
    streamed = Images(source, cfg, cache_bytes=0, workers=1)
    assert held.in_memory and not streamed.in_memory
    (x1, y1), (x2, y2) = next(held.in_order(3)), next(streamed.in_order(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.shape == (3, 100, 5)
    # dog.jpg is 40 x 40: its box [0, 0, 40, 40] becomes the whole 32 x 32 input
    assert y1[1, 0].tolist() == [0, 0, 32, 32, 1] and (y1[1, 1:] == -1).all()
    assert int((y1[:, :, 4] >= 0).sum()) == 5
