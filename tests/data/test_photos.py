"""The embedded photos source: crops of the photos shipped in scikit-image and scikit-learn."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from edgevit.data import DataSpec, open_data
from edgevit.data.photos import CLASS_NAMES, COUNT, CROPS_PER_PHOTO, PHOTOS, SIZE, _photo, open_photos
from edgevit.errors import DataError

needs_skimage = pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None, reason="the photos source needs scikit-image"
)


@needs_skimage
def test_count_and_split_sizes() -> None:
    assert len(PHOTOS) >= 10 and COUNT == len(PHOTOS) * CROPS_PER_PHOTO >= 200
    sizes = {s: len(open_photos(s)) for s in ("train", "val", "test", "all")}
    assert sizes["train"] + sizes["val"] + sizes["test"] == sizes["all"] == COUNT
    assert sizes["train"] == round(COUNT * 0.6) and sizes["val"] == round(COUNT * 0.2)
    small = open_photos("test", count=10, seed=3)
    assert len(small) == 10 and small.description == "photos/test[10@3]"


@needs_skimage
def test_crops_are_deterministic_rgb_uint8_and_large_enough() -> None:
    a, b = open_photos("val", count=12, seed=1), open_photos("val", count=12, seed=1)
    assert a.sha256() == b.sha256() != open_photos("val", count=12, seed=2).sha256()
    for image in a:
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3) and SIZE >= 224
    assert not np.array_equal(a.read(0), a.read(1))


@needs_skimage
def test_splits_are_disjoint_and_labels_name_the_photo() -> None:
    train, test, every = open_photos("train"), open_photos("test"), open_photos("all")
    assert train.class_names == test.class_names == CLASS_NAMES == [name for name, _, _ in PHOTOS]
    assert set(train.labels.tolist()) == set(range(len(PHOTOS)))  # every photo has crops in train
    assert np.bincount(every.labels).tolist() == [CROPS_PER_PHOTO] * len(PHOTOS)
    # no crop of test is also in train (compared by content, on a sample of each)
    train_pixels = {train.read(k).tobytes() for k in range(0, len(train), 6)}
    assert all(test.read(k).tobytes() not in train_pixels for k in range(0, len(test), 4))
    # a crop's label is its photo: crop k of "all" is the (k % CROPS_PER_PHOTO)-th of photo k // CROPS_PER_PHOTO
    k = 3 * CROPS_PER_PHOTO + 2
    assert every.labels[k] == 3 and CLASS_NAMES[3] == "rocket"


@needs_skimage
def test_open_data_dispatches_photos() -> None:
    source = open_data(DataSpec(source="photos", split="all"))
    assert len(source) == COUNT and source.task == "classification" and source.description == "photos/all"
    assert source.labels[0] == 0 and source.labels[-1] == len(PHOTOS) - 1
    assert np.array_equal(source.read(5), open_photos("all").read(5))
    assert _photo.cache_info().currsize <= 2  # decoded photos are cached two at a time, whatever was read


def test_missing_scikit_image_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # find_spec (and import) now say: not installed
    with pytest.raises(DataError) as err:
        open_data(DataSpec(source="photos", split="test"))
    assert "scikit-image" in err.value.message and "not installed" in err.value.message
    assert err.value.fix == "pip install scikit-image (tools/setup.sh installs it)"
