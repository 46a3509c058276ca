"""Procedural scenes with analytic masks and depth, the dense on-disk format, dense streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevit.data import DataSpec, open_data
from edgevit.data.dense_folder import read_depth, write_sample
from edgevit.data.scenes import SEG_CLASSES, render_scene, write_dense_folder
from edgevit.data.stream import Images
from edgevit.data.transforms import preprocess_target
from edgevit.errors import DataError
from edgevit.models.config import ModelConfig


def test_scenes_are_pure_functions_of_their_index_with_consistent_truth() -> None:
    a, b = render_scene(7), render_scene(7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    image, mask, depth = render_scene(7)
    assert image.shape == (32, 32, 3) and mask.shape == depth.shape == (32, 32)
    assert mask.max() < len(SEG_CLASSES) and (mask > 0).any() and (mask == 0).any()
    # shapes stand in front of the ground: nearer than the ground plane's nearest row
    assert depth[mask > 0].max() < depth[mask == 0].max()
    big_image, big_mask, _ = render_scene(7, 128)
    # the same scene at another size: the masks agree where both are sampled
    assert np.mean(big_mask[2::4, 2::4] == mask) > 0.97
    assert big_image.shape == (128, 128, 3)


def test_embedded_dense_sources_carry_their_maps() -> None:
    seg = open_data(DataSpec(source="shapes-seg", split="val", count=4))
    assert seg.dense and seg.task == "segmentation" and seg.class_names == list(SEG_CLASSES)
    assert seg.read_target(0).dtype == np.uint8
    depth = open_data(DataSpec(source="shapes-depth", split="val", count=4))
    assert depth.task == "depth" and depth.read_target(0).dtype == np.float32
    # the same images; the hash covers the maps, so the two differ
    assert np.array_equal(seg.read(2), depth.read(2)) and seg.sha256() != depth.sha256()


def test_dense_folder_round_trip(tmp_path: Path) -> None:
    write_dense_folder(tmp_path / "d", 6)
    spec = DataSpec(source=str(tmp_path / "d"), split="all")
    seg = open_data(spec, task="segmentation")
    depth = open_data(spec, task="depth")
    for k in range(6):
        image, mask, truth = render_scene(k)
        assert np.array_equal(seg.read(k), image) and np.array_equal(seg.read_target(k), mask)
        assert np.abs(depth.read_target(k) - truth).max() <= 0.0005 + 1e-6  # millimetres
    assert seg.class_names == list(SEG_CLASSES)
    with pytest.raises(DataError, match="both masks/ and depth/"):
        open_data(spec)


def test_dense_folder_errors_name_the_file(tmp_path: Path) -> None:
    image, mask, _ = render_scene(0)
    write_sample(tmp_path, "a", image, mask, None)
    write_sample(tmp_path, "b", image, None, None)
    (tmp_path / "classes.txt").write_text("\n".join(SEG_CLASSES))
    with pytest.raises(DataError, match=r"masks/b\.png is missing"):
        open_data(DataSpec(source=str(tmp_path), split="all"))
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "masks" / "b.png")  # RGB, not a mask
    source = open_data(DataSpec(source=str(tmp_path), split="all"))
    with pytest.raises(DataError, match=r"b\.png is not an 8-bit single-channel PNG"):
        source.read_target(1)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"no classes\.txt"):
        open_data(DataSpec(source=str(tmp_path), split="all"))
    with pytest.raises(DataError, match="no depth/ folder"):
        open_data(DataSpec(source=str(tmp_path), split="all"), task="depth")


def test_depth_png_is_millimetres(tmp_path: Path) -> None:
    write_sample(tmp_path, "x", np.zeros((2, 2, 3), np.uint8), None, np.array([[0.0, 1.2346], [65.0, 3.0]]))
    metres = read_depth(tmp_path / "depth" / "x.png")
    assert metres.ravel().tolist() == pytest.approx([0.0, 1.2346, 65.0, 3.0], abs=5e-4)


def test_maps_follow_their_images_geometry() -> None:
    cfg = ModelConfig(architecture="x", num_classes=6, input_size=(3, 16, 16), crop_pct=0.5)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 3  # the centre half: what a 0.5 centre crop keeps
    out = preprocess_target(mask, cfg)
    assert out.shape == (16, 16) and out.dtype == np.int64 and (out == 3).all()
    depth = preprocess_target(np.full((32, 32), 2.5, np.float32), cfg)
    assert depth.dtype == np.float32 and (depth == 2.5).all()


def test_streamed_dense_maps_equal_the_in_memory_ones() -> None:
    cfg = ModelConfig(
        architecture="x", num_classes=6, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3
    )
    source = open_data(DataSpec(source="shapes-seg", split="val", count=10))
    held = Images(source, cfg, cache_bytes=2**30)
    streamed = Images(source, cfg, cache_bytes=0, workers=1)
    assert held.in_memory and not streamed.in_memory
    for (x1, y1), (x2, y2) in zip(held.in_order(4), streamed.in_order(4), strict=True):
        assert y1.shape == (len(x1), 32, 32) and y1.dtype == y2.dtype
        assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())


def test_scene_boxes_are_tight_around_each_shapes_visible_pixels() -> None:
    from edgevit.data.scenes import DET_CLASSES, MIN_VISIBLE, draw_scene, scene_boxes

    objects = 0
    for index in range(40):
        image, mask, _, boxes = draw_scene(index)
        assert np.array_equal(image, render_scene(index)[0]) and np.array_equal(boxes, scene_boxes(index))
        covered = np.zeros_like(mask, dtype=bool)
        for x0, y0, x1, y1, cls in boxes.astype(int):
            assert 0 <= cls < len(DET_CLASSES) and 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            inside = mask[y0:y1, x0:x1] == cls + 1
            # tight: the class's pixels reach every edge of the box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
            objects += 1
        # every shape pixel is in a box of its class, but for shapes hidden down to a few pixels
        assert ((mask > 0) & ~covered).sum() < 2 * MIN_VISIBLE
    assert objects > 40  # one or two shapes a scene
    # the same scene at 4x the size: the boxes scale with it
    small, big = scene_boxes(5), scene_boxes(5, 128)
    assert np.abs(big[:, :4] / 4 - small[:, :4]).max() <= 1.0 and np.array_equal(big[:, 4], small[:, 4])


def test_detection_scenes_source_and_coco_folder(tmp_path: Path) -> None:
    from edgevit.data.scenes import DET_CLASSES, scene_boxes, write_coco_folder

    det = open_data(DataSpec(source="shapes-det", split="val", count=3))
    assert det.task == "detection" and det.dense and det.class_names == list(DET_CLASSES)
    assert det.read_target(0).shape[1] == 5
    write_coco_folder(tmp_path / "coco", 5)
    folder = open_data(DataSpec(source=str(tmp_path / "coco"), split="all"))
    assert folder.task == "detection" and folder.class_names == list(DET_CLASSES) and len(folder) == 5
    for k in range(5):
        assert np.array_equal(folder.read(k), render_scene(k)[0])
        assert np.array_equal(folder.read_target(k), scene_boxes(k))
