from pathlib import Path

import numpy as np
import pytest

from edgevit.data import DataSpec, load_data
from edgevit.data.transforms import preprocess
from edgevit.errors import DataError
from edgevit.models.config import ModelConfig
from tests.conftest import write_image_folder

CFG = ModelConfig(
    architecture="x",
    num_classes=3,
    input_size=(3, 32, 32),
    mean=(0.5,) * 3,
    std=(0.5,) * 3,
    interpolation="bilinear",
    crop_pct=1.0,
)


def test_digits_splits_are_fixed_disjoint_and_complete() -> None:
    sizes = {s: len(load_data(DataSpec(source="digits", split=s))) for s in ("train", "val", "test")}
    assert sizes == {"train": 1078, "val": 359, "test": 360}
    a = load_data(DataSpec(source="digits", split="train", count=50, seed=1))
    b = load_data(DataSpec(source="digits", split="train", count=50, seed=1))
    c = load_data(DataSpec(source="digits", split="train", count=50, seed=2))
    assert a.sha256() == b.sha256() != c.sha256()
    test = load_data(DataSpec(source="digits", split="test"))
    train = load_data(DataSpec(source="digits", split="train"))
    train_keys = {
        img.tobytes() + bytes([int(lbl)]) for img, lbl in zip(train.images, train.labels, strict=True)
    }
    overlap = sum(
        img.tobytes() + bytes([int(lbl)]) in train_keys
        for img, lbl in zip(test.images, test.labels, strict=True)
    )
    assert overlap < 5  # digits has a few duplicate images; splits themselves are index-disjoint
    assert test.images[0].shape == (8, 8, 3) and test.images[0].dtype == np.uint8


def test_preprocess_follows_model_config() -> None:
    data = load_data(DataSpec(source="digits", split="test", count=4))
    x = preprocess(data, CFG)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1.0001 and x.max() <= 1.0001  # (p/255 - 0.5) / 0.5


def test_image_folder_with_and_without_split_dirs(tmp_path: Path) -> None:
    flat = write_image_folder(tmp_path / "flat", {"a": 10, "b": 10})
    all_ = load_data(DataSpec(source=str(flat), split="all"))
    assert len(all_) == 20 and all_.class_names == ["a", "b"]
    parts = [len(load_data(DataSpec(source=str(flat), split=s))) for s in ("train", "val", "test")]
    assert sum(parts) == 20
    write_image_folder(tmp_path / "split" / "test", {"a": 3, "b": 2})
    test = load_data(DataSpec(source=str(tmp_path / "split"), split="test"))
    assert len(test) == 5 and sorted(test.labels.tolist()) == [0, 0, 0, 1, 1]


def test_folder_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataSpec(source=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-directories"):
        load_data(DataSpec(source=str(tmp_path / "empty")))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no PNG/JPEG"):
        load_data(DataSpec(source=str(tmp_path / "noimg"), split="all"))
    bad = write_image_folder(tmp_path / "bad", {"a": 2})
    (bad / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png cannot be read"):
        load_data(DataSpec(source=str(bad), split="all"))


def test_manifest_hash_detects_changed_data() -> None:
    with pytest.raises(DataError, match="manifest expects"):
        load_data(DataSpec(source="digits", split="test", sha256="0" * 64))
