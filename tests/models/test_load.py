import pickle
from pathlib import Path

import pytest
import torch

from edgevit.errors import ModelLoadError
from edgevit.models import VisionTransformerPlus, load
from edgevit.models.load import create


def test_safetensors_round_trip_and_from_pretrained(tiny_checkpoint: Path) -> None:
    loaded = load(checkpoint=tiny_checkpoint)
    assert loaded.config.architecture == "vit_plus_tiny_patch8_32"
    assert loaded.sha256 and len(loaded.sha256) == 64
    again = VisionTransformerPlus.from_pretrained(str(tiny_checkpoint / "model.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), again(x))
    assert not again.training


def test_timm_style_state_dict_loads_weights_only(tmp_path: Path) -> None:
    model = create("vit_plus_tiny_patch8_32", num_classes=4, depth=1)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = load("vit_plus_tiny_patch8_32", path, depth=1)
    assert loaded.config.num_classes == 4  # taken from the head's shape
    assert torch.equal(loaded.model.head.weight, model.head.weight)


class Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"model": Evil()}, handle)
    with pytest.raises(ModelLoadError, match="not loaded for safety"):
        load("vit_plus_tiny_patch8_32", path)


def test_truncated_safetensors_names_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model.safetensors"
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"corrupt or truncated") as info:
        load(checkpoint=broken)
    assert str(broken) in str(info.value)


def test_wrong_architecture_lists_what_did_not_match(tmp_path: Path) -> None:
    model = create("vit_plus_tiny_patch8_32", num_classes=10, depth=2)
    path = tmp_path / "two_blocks.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"does not fit .*unexpected keys \(blocks\.1"):
        load("vit_plus_tiny_patch8_32", path, depth=1)
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        load("vit_plus_small_patch16_224", path)


def test_name_disagreeing_with_config_is_an_error(tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a vit_plus_tiny_patch8_32, not a vit_plus_base"):
        load("vit_plus_base_patch16_224", tiny_checkpoint)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load("vit_plus_tiny_patch8_32", tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match="unknown model name"):
        create("vit_plus_gigantic_patch3_7")
