"""Rotations folded into a ViT keep its float function, on every structure they apply to, and say
why where they do not."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from edgevit.models.load import create
from edgevit.models.rotation import float_transforms
from edgevit.quant.rotate import hadamard_fc2, residual_refusal, rotate, rotate_values, stream_rotation
from edgevit.quant.simulate import LINEAR

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2}
MODELS: dict[str, tuple[str, dict[str, Any], bool]] = {
    # id: timm/ViT-Plus name, kwargs, whether the residual stream can be rotated
    "dinov2-reg4-headless": (
        "vit_small_patch14_reg4_dinov2",
        {**SMALL, "num_classes": 0, "img_size": 28},
        True,
    ),
    "dinov2-classifier": ("vit_small_patch14_dinov2", {**SMALL, "num_classes": 5, "img_size": 28}, True),
    "deit-avg-fc-norm": (
        "deit_tiny_patch16_224",
        {**SMALL, "num_classes": 5, "img_size": 32, "global_pool": "avg", "fc_norm": True},
        True,
    ),
    "clip-norm-pre": ("vit_base_patch16_clip_224", {**SMALL, "num_classes": 0, "img_size": 32}, False),
    "vit-plus": ("vit_plus_tiny_patch8_32", {"depth": 2, "num_classes": 10}, True),
    "vit-plus-distilled": (
        "vit_plus_tiny_patch8_32",
        {"depth": 2, "num_classes": 10, "distill_token": True},
        True,
    ),
}


def _model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    model = create(name, **kwargs).eval()
    with torch.no_grad():  # pretrained-like: LayerScale, norms and biases far from their init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("key", sorted(MODELS))
def test_rotation_keeps_the_function(key: str) -> None:
    name, kwargs, residual = MODELS[key]
    model = _model(name, kwargs)
    x = torch.randn(3, 3, *model.patch_embed.img_size)
    rotated = copy.deepcopy(model)
    done = rotate(rotated)
    assert done.values == 2 and done.residual is residual and done.fc2_hadamard > 0, done
    assert bool(done.skipped) is not residual
    assert done.spec.feature_head is (residual and kwargs.get("num_classes") == 0)
    with torch.no_grad():
        ref, out = model(x), rotated(x)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-4 * float(ref.abs().max()), key
    assert not torch.equal(rotated.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    # the Hadamard before fc2 is a float transform: no INT8 scope takes it
    transforms = float_transforms(rotated)
    assert len(transforms) == 2 + (key == "dinov2-reg4-headless") and not set(transforms) & set(
        LINEAR.layers(rotated)
    )


def test_the_stream_rotation_is_orthogonal_and_keeps_the_all_ones_direction() -> None:
    q = stream_rotation(48, seed=3)
    assert torch.allclose(q @ q.T, torch.eye(48, dtype=q.dtype), atol=1e-12)
    ones = torch.ones(48, dtype=q.dtype)
    assert torch.allclose(ones @ q, ones, atol=1e-12)
    assert float((q - torch.eye(48, dtype=q.dtype)).abs().max()) > 0.1  # a real rotation


def test_rotation_spreads_a_massive_channel() -> None:
    """A residual channel 50x the rest (as pretraining leaves) no longer dominates the LayerNorm
    output the qkv layer reads."""
    name, kwargs, _ = MODELS["dinov2-classifier"]
    model = _model(name, kwargs)
    with torch.no_grad():
        model.blocks[0].norm1.weight[7] = 50.0
    seen: dict[str, torch.Tensor] = {}

    def peak(m: nn.Module) -> float:
        hook = m.blocks[0].attn.qkv.register_forward_pre_hook(lambda _, a: seen.__setitem__("x", a[0]))
        with torch.no_grad():
            m(torch.randn(2, 3, 28, 28))
        hook.remove()
        x = seen["x"]
        return float(x.abs().max() / x.pow(2).mean().sqrt())

    rotated = copy.deepcopy(model)
    rotate(rotated)
    assert peak(rotated) < peak(model) / 3


def test_parts_that_cannot_apply_leave_the_model_alone() -> None:
    name, kwargs, _ = MODELS["clip-norm-pre"]
    model = _model(name, kwargs)
    assert "norm_pre" in str(residual_refusal(model))
    plain = create("deit_tiny_patch16_224", depth=1, embed_dim=64, num_heads=2, img_size=32, mlp_ratio=1.5)
    before = copy.deepcopy(plain.state_dict())
    assert not hadamard_fc2(plain, 128)  # a hidden width of 96 has no 128-blocks
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    assert rotate_values(nn.Linear(4, 4)) == 0
