"""The embedded shapes/texture dataset: deterministic, balanced, split like the others, exportable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevit.data import DataSpec, load_data
from edgevit.data.shapes import CLASS_NAMES, COUNT, render, write_image_folder


def test_images_are_a_function_of_their_index() -> None:
    a, label = render(17)
    b, again = render(17)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and label == again == 17 % 10
    assert np.array_equal(a, b) and not np.array_equal(a, render(27)[0])


def test_splits_are_disjoint_and_balanced() -> None:
    train = load_data(DataSpec(source="shapes", split="train"))
    test = load_data(DataSpec(source="shapes", split="test"))
    assert train.class_names == CLASS_NAMES and len(train) + len(test) < COUNT
    assert train.sha256() != test.sha256()
    counts = np.bincount(train.labels, minlength=10)
    assert counts.min() > 0.8 * counts.mean()
    small = load_data(DataSpec(source="shapes", split="test", count=20, seed=3))
    assert len(small) == 20 and small.description == "shapes/test[20@3]"


def test_exported_image_folder_loads_the_same_images(tmp_path: Path) -> None:
    n = write_image_folder(str(tmp_path / "shapes"), split="val")
    folder = load_data(DataSpec(source=str(tmp_path / "shapes"), split="all"), CLASS_NAMES)
    embedded = load_data(DataSpec(source="shapes", split="val"))
    assert n == len(folder) == len(embedded)
    assert sorted(img.tobytes() for img in folder.images) == sorted(img.tobytes() for img in embedded.images)
