"""Streaming: images read one at a time, served in batches by loader workers, in bounded memory."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.data import DataSpec, load_data, open_data
from edgevit.data.stream import Images
from edgevit.data.transforms import preprocess
from edgevit.errors import DataError
from tests.conftest import write_image_folder
from tests.data.test_data import CFG


@pytest.mark.parametrize("source", ["digits", "shapes", "folder"])
def test_a_source_reads_the_same_images_one_at_a_time(source: str, tmp_path: Path) -> None:
    if source == "folder":
        source = str(write_image_folder(tmp_path / "imgs", {"a": 6, "b": 7, "c": 5}, size=20))
    spec = DataSpec(source=source, split="train", count=9, seed=3)
    held, streamed = load_data(spec), open_data(spec)
    assert len(streamed) == len(held) == 9 and streamed.description == held.description
    assert np.array_equal(streamed.labels, held.labels)
    assert all(np.array_equal(streamed.read(k), held.images[k]) for k in range(9))
    assert streamed.sha256() == held.sha256()


def test_streamed_batches_equal_the_in_memory_ones(tmp_path: Path) -> None:
    """Two loader workers, any order of indices: the same tensors as preprocessing everything."""
    root = write_image_folder(tmp_path / "imgs", {"a": 10, "b": 10, "c": 10}, size=20)
    source = open_data(DataSpec(source=str(root), split="all"))
    memory = Images(source, CFG)
    streamed = Images(source, CFG, workers=2, cache_bytes=0)
    assert memory.in_memory and not streamed.in_memory and streamed._x is None
    assert streamed.mode == "streamed, 2 loader worker(s)"
    order = [[29, 3, 17], [0], [5, 6, 7, 8, 9, 10, 11], [28, 1]]
    for (xa, ya), (xb, yb) in zip(memory.batches(order), streamed.batches(order), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    whole = preprocess(load_data(DataSpec(source=str(root), split="all")), CFG)
    assert np.array_equal(np.concatenate([x.numpy() for x, _ in streamed.in_order(8)]), whole)


def test_a_broken_image_met_by_a_worker_is_one_line_naming_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=20)
    (root / "b" / "002.png").write_bytes(b"not a png")
    images = Images(open_data(DataSpec(source=str(root), split="all")), CFG, workers=1, cache_bytes=0)
    with pytest.raises(DataError) as err:
        list(images.in_order(3))
    assert "002.png cannot be read" in str(err.value) and "\n" not in str(err.value)


def test_the_cache_limit_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    source = open_data(DataSpec(source="digits", split="val", count=20))
    monkeypatch.setenv("EDGEVIT_DATA_CACHE_MB", "0")
    assert not Images(source, CFG).in_memory
    monkeypatch.setenv("EDGEVIT_DATA_CACHE_MB", "1")  # 20 x 3 x 32 x 32 x 4 bytes = 240 KiB
    assert Images(source, CFG).in_memory
    monkeypatch.setenv("EDGEVIT_DATA_CACHE_MB", "lots")
    with pytest.raises(Exception, match="EDGEVIT_DATA_CACHE_MB"):
        Images(source, CFG)
