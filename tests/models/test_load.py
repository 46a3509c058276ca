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


def test_a_headless_checkpoint_loads_as_an_embedding_model(tmp_path) -> None:
    """A backbone state dict (no head.*, as DINOv2/CLIP/MAE ship) loads with num_classes 0."""
    import torch

    from edgevit.models.load import create, load

    backbone = create("vit_small_patch14_dinov2", num_classes=0, img_size=56, depth=2)
    torch.save(backbone.state_dict(), tmp_path / "backbone.pth")
    loaded = load("vit_small_patch14_dinov2", tmp_path / "backbone.pth", depth=2, img_size=56)
    assert loaded.config.num_classes == 0
    assert loaded.config.task == "embedding"
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), backbone(x))


def test_input_size_resamples_the_position_embeddings(tmp_path) -> None:
    """Another img_size resamples pos_embed at load; the config then describes the model as built."""
    import torch

    from edgevit.models.load import create, load, save

    model = create("vit_small_patch14_dinov2", num_classes=0, img_size=56, depth=2)
    saved = load("vit_small_patch14_dinov2", None, num_classes=0, img_size=56, depth=2)
    saved.model.load_state_dict(model.state_dict())
    save(saved.model, saved.config, tmp_path)
    small = load(checkpoint=tmp_path, img_size=28)
    assert small.config.input_size == (3, 28, 28)
    assert small.config.model_kwargs["img_size"] == 28
    assert small.model.pos_embed.shape[1] == 1 + 2 * 2  # the class token and a 2x2 grid of patches
    with torch.no_grad():
        assert small.model(torch.randn(2, 3, 28, 28)).shape == (2, 384)
    # and the resized model reloads as saved
    save(small.model, small.config, tmp_path / "small")
    again = load(checkpoint=tmp_path / "small")
    assert again.config.input_size == (3, 28, 28)
    assert torch.equal(again.model.pos_embed, small.model.pos_embed)


def test_an_input_size_the_patches_do_not_tile_is_refused_with_one_that_does() -> None:
    from edgevit.models.load import create

    with pytest.raises(ModelLoadError, match=r"not a multiple of .*patch size \(14, 14\)") as info:
        create("vit_small_patch14_dinov2", num_classes=0, img_size=100, depth=1)
    assert info.value.fix is not None and "e.g. 98" in info.value.fix
