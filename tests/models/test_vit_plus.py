import pytest
import timm
import torch

from edgevit.models.vit_plus import VisionTransformerPlus, split_heads


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vit_plus_base_patch16_224", 86e6),
        ("vit_plus_large_patch16_224", 307e6),
        ("vit_plus_huge_patch14_224", 632e6),
    ],
)
def test_parameter_counts_within_two_percent(name: str, expected: float) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.02, count


def test_registered_variants_cover_sizes_patches_and_inputs() -> None:
    names = set(timm.list_models("vit_plus_*"))
    for size in ("tiny", "small", "base", "large", "huge"):
        for suffix in ("patch16_224", "patch16_384", "patch16_512", "patch14_224"):
            assert f"vit_plus_{size}_{suffix}" in names
    assert "vit_plus_tiny_patch8_32" in names


def test_split_heads_is_even_and_complete() -> None:
    assert split_heads(12, (1, 2, 4)) == [(0, 4, 1), (4, 4, 2), (8, 4, 4)]
    assert split_heads(16, (1, 2, 4)) == [(0, 6, 1), (6, 5, 2), (11, 5, 4)]
    with pytest.raises(ValueError):
        split_heads(2, (1, 2, 4))


def test_explicit_head_counts_per_scale() -> None:
    assert split_heads(2, (1, 2, 4), [1, 0, 1]) == [(0, 1, 1), (1, 1, 4)]
    with pytest.raises(ValueError, match="summing to 3"):
        split_heads(3, (1, 2, 4), [1, 1, 0])


def test_blocks_can_differ_in_heads_and_mlp_width() -> None:
    model = timm.create_model(
        "vit_plus_tiny_patch8_32", num_classes=3, block_heads=[[1, 1, 1], [0, 2, 0]], block_mlp=[64, 16]
    )
    assert len(model.blocks) == 2
    assert model.blocks[1].attn.groups == [(0, 2, 2)] and model.blocks[1].attn.qkv.out_features == 3 * 2 * 64
    assert model.blocks[1].mlp.fc1.out_features == 16
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="at least one head"):
        timm.create_model("vit_plus_tiny_patch8_32", block_heads=[[0, 0, 0]])
    with pytest.raises(ValueError, match="block_mlp has 1 entries for 2 blocks"):
        timm.create_model("vit_plus_tiny_patch8_32", block_heads=[[1, 1, 1]] * 2, block_mlp=[8])


def test_distillation_token_model() -> None:
    from edgevit.models.vit_plus import add_distill_token

    torch.manual_seed(0)
    plain = timm.create_model("vit_plus_tiny_patch8_32", num_classes=4, depth=1).eval()
    model = timm.create_model("vit_plus_tiny_patch8_32", num_classes=4, depth=1, distill_token=True)
    model.load_state_dict(add_distill_token(plain.state_dict()), strict=True)
    assert model.num_prefix_tokens == 2 and model.pos_embed.shape[1] == 16 + 2
    x = torch.randn(3, 3, 32, 32)
    model.set_distilled_training(True)
    cls, dist = model.train()(x)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x),
            (model.head(model.forward_features(x)[:, 0]) + model.head_dist(model.forward_features(x)[:, 1]))
            / 2,
        )
    assert cls.shape == dist.shape == (3, 4)
    with pytest.raises(ValueError, match="distill_token needs a class token"):
        timm.create_model("vit_plus_tiny_patch8_32", distill_token=True, class_token=False, global_pool="avg")


def test_timm_vit_weights_load_and_match_with_multiscale_off() -> None:
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=5).eval()
    plus = timm.create_model("vit_plus_tiny_patch16_224", num_classes=5, ms_scales=(1,)).eval()
    plus.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(plus(x), ref(x), atol=1e-4)


def test_multiscale_attention_changes_the_function_not_the_weights() -> None:
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=5).eval()
    plus = timm.create_model("vit_plus_tiny_patch16_224", num_classes=5).eval()
    plus.load_state_dict(ref.state_dict(), strict=True)  # parameter-free pooling: same keys/shapes
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(plus(x), ref(x), atol=1e-3)
    assert plus.ms_scales == (1, 2, 4)


def test_embed_dim_and_replaceable_head_for_fine_tuning() -> None:
    model = timm.create_model("vit_plus_tiny_patch8_32", num_classes=10)
    assert isinstance(model, VisionTransformerPlus)
    assert model.embed_dim == 192
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_pretrained_weights_are_not_fetched() -> None:
    with pytest.raises(ValueError, match="no hosted weights"):
        timm.create_model("vit_plus_tiny_patch8_32", pretrained=True)


def test_export_uses_standard_ops_and_matches_torch(tiny_checkpoint, tiny_onnx) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgevit.models.load import load

    ops = {n.op_type for n in onnx.load(str(tiny_onnx)).graph.node}
    assert "AveragePool" in ops and "Softmax" in ops and "MatMul" in ops
    assert not any(op.startswith("Attention") for op in ops)
    model = load(checkpoint=tiny_checkpoint).model
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, atol=1e-4)
