"""The modules a rotated checkpoint carries: the fast Hadamard transform, and a rotated model
saved and loaded again through its config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from edgevit.errors import ModelLoadError
from edgevit.models.load import config_for, create, load, save
from edgevit.models.rotation import BlockHadamard, float_transforms, hadamard
from edgevit.quant.rotate import rotate


@pytest.mark.parametrize("block", [2, 16, 128])
def test_the_fast_transform_is_the_block_diagonal_hadamard_matrix(block: int) -> None:
    x = torch.randn(2, 3, 256)
    matrix = torch.block_diag(*[hadamard(block)] * (256 // block))
    assert torch.allclose(BlockHadamard(block)(x).double(), x.double() @ matrix, atol=1e-5)
    assert torch.allclose(matrix @ matrix, torch.eye(256, dtype=torch.float64), atol=1e-12)  # its own inverse
    assert float_transforms(nn.Sequential(BlockHadamard(block))) == ["0.transform"]  # kept float by targets


def test_a_block_is_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        BlockHadamard(96)


def test_a_rotated_headless_model_saves_and_loads(tmp_path: Path) -> None:
    kwargs = {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 28}
    torch.manual_seed(0)
    model = create("vit_small_patch14_reg4_dinov2", num_classes=0, **kwargs).eval()
    rotated = copy.deepcopy(model)
    done = rotate(rotated)
    config = config_for("vit_small_patch14_reg4_dinov2", model, model_kwargs=kwargs)
    save(rotated, config.model_copy(update={"rotation": done.spec}), tmp_path)
    loaded = load(checkpoint=tmp_path)
    assert loaded.config.rotation == done.spec and loaded.config.task == "embedding"
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(loaded.model(x), ref, atol=1e-4 * float(ref.abs().max()))
    # without the record, the rotated weights do not fit the architecture: refused, not misread
    save(rotated, config, tmp_path / "bare")
    with pytest.raises(ModelLoadError, match="head"):
        load(checkpoint=tmp_path / "bare")
