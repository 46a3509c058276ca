"""The export cache: the same model exported again is a copy; any change to it is a new export."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from edgevit.models.load import load
from edgevit.stages import export
from edgevit.stages.export_cache import export_key


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "exports"


def test_the_same_model_is_exported_once(
    tiny_checkpoint: Path, tmp_path: Path, cache: Path, monkeypatch
) -> None:
    loaded = load(checkpoint=tiny_checkpoint)
    size = loaded.config.input_size
    first = export.export_onnx(loaded.model, size, tmp_path / "a" / "model.onnx")
    assert len(list(cache.glob("*.onnx"))) == 1

    def no_export(*_args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "_export", no_export)
    again = load(checkpoint=tiny_checkpoint).model  # loaded anew: the same weights and settings
    second = export.export_onnx(again, size, tmp_path / "b" / "model.onnx")
    assert second.read_bytes() == first.read_bytes()
    changed = copy.deepcopy(again)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(AssertionError, match="exported again"):
        export.export_onnx(changed, size, tmp_path / "c" / "model.onnx")
    monkeypatch.setenv("EDGEVIT_EXPORT_CACHE", "0")
    with pytest.raises(AssertionError, match="exported again"):
        export.export_onnx(again, size, tmp_path / "d" / "model.onnx")


def test_the_key_follows_weights_settings_and_size(tiny_checkpoint: Path) -> None:
    model = load(checkpoint=tiny_checkpoint).model.eval()
    key = export_key(model, (3, 32, 32), 18)
    assert export_key(copy.deepcopy(model), (3, 32, 32), 18) == key
    assert export_key(model, (3, 64, 64), 18) != key
    assert export_key(model, (3, 32, 32), 23) != key
    pooled = copy.deepcopy(model)
    pooled.global_pool = "avg" if getattr(model, "global_pool", "token") != "avg" else "token"
    assert export_key(pooled, (3, 32, 32), 18) != key  # a setting no weight shows
    tensor = copy.deepcopy(model)
    tensor.blocks[0].extra = torch.ones(3)  # a plain tensor attribute
    assert export_key(tensor, (3, 32, 32), 18) != key


def test_the_oldest_entries_go_past_the_limits(tmp_path: Path, cache: Path, monkeypatch) -> None:
    from edgevit.stages import export_cache

    monkeypatch.setattr(export_cache, "KEEP", 3)
    monkeypatch.setattr(export_cache, "KEEP_BYTES", 250)
    made = tmp_path / "made.onnx"
    for i in range(5):
        made.write_bytes(b"x" * 100)
        export_cache.store(f"k{i}", made)
        if (cache / f"k{i}.onnx").exists():  # distinct times however coarse the file system's clock
            os.utime(cache / f"k{i}.onnx", (1000 + i, 1000 + i))
    assert sorted(p.stem for p in cache.glob("*.onnx")) == ["k3", "k4"]  # 3 would pass 250 bytes
    assert export_cache.cached("k4", tmp_path / "out.onnx") and not export_cache.cached(
        "k0", tmp_path / "o.onnx"
    )
