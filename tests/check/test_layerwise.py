"""Layer-wise comparison helpers: SQNR, module names from the exporter's name scopes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgevit.check.layerwise import layers, sqnr_db
from edgevit.targets.graph import module_name


def test_sqnr_db_of_known_noise() -> None:
    x = np.ones(1000, np.float32)
    assert sqnr_db(x, x) == 150.0  # identical: the cap
    assert sqnr_db(x, x + 0.1) == pytest.approx(20.0)  # noise power 0.01 of signal 1
    assert sqnr_db(x, np.zeros_like(x)) == pytest.approx(0.0)


def _node(op: str, name: str, scopes: list[str]) -> onnx.NodeProto:
    node = helper.make_node(op, ["a", "w"], [f"{name}_out"], name=name)
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(scopes)
    return node


def test_module_names_from_name_scopes() -> None:
    scopes = ["", "blocks", "blocks.1", "blocks.1.mlp", "blocks.1.mlp.fc1", "linear_6"]
    linear = _node("MatMul", "node_MatMul_1", scopes)
    attn = _node("MatMul", "node_matmul_3", ["", "blocks", "blocks.0", "blocks.0.attn", "matmul_3"])
    conv = _node("Conv", "node_conv2d", ["", "patch_embed", "patch_embed.proj", "conv2d"])
    own = _node(
        "MatMul", "node_matmul", ["", "blocks", "blocks.0", "blocks.0.attn", "blocks.0.attn.qk.1", "matmul"]
    )
    bare = helper.make_node("Gemm", ["a", "w"], ["y"], name="gemm_0")
    assert module_name(linear) == ("blocks.1.mlp.fc1", "blocks.1")
    assert module_name(attn) == ("blocks.0.attn/matmul_3", "blocks.0")  # timm's attention: no module
    assert module_name(own) == ("blocks.0.attn.qk.1", "blocks.0")  # ViT-Plus's MatMul modules
    assert module_name(conv) == ("patch_embed.proj", "patch_embed")
    assert module_name(bare) == ("gemm_0", "")


def test_layers_of_an_exported_model(tiny_onnx) -> None:
    found = layers(onnx.load(str(tiny_onnx)))
    names = [f.name for f in found]
    assert names[0] == "patch_embed.proj" and names[-1] == "head"
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"} <= set(names)


def test_attention_matmuls_run_alone_on_both_operands(tiny_checkpoint, tiny_onnx, tmp_path) -> None:
    """With matmul_scope: all an attention matmul's two inputs are activations: the layer run alone
    gets both (before, the extracted span lacked its second operand and the comparison failed)."""
    from edgevit.check import layerwise
    from edgevit.models.load import load
    from edgevit.recipe.schema import QuantizeStage
    from edgevit.targets import TARGETS, LowerRequest

    cfg = load(checkpoint=tiny_checkpoint).config
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    stage = QuantizeStage(stage="quantize", matmul_scope="all", equalize="off")
    artifact = TARGETS.get("onnxruntime").lower(LowerRequest(tiny_onnx, "int8", cfg, {}, stage, x), tmp_path)
    found = layerwise.summary(tiny_onnx, artifact, x[:4], "onnxruntime")["layers"]
    attention = [row for row in found if row["layer"] == "blocks.0.attn.qk.0"]
    assert attention and attention[0]["quantized"] and attention[0]["local_sqnr_db"] < 150


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_chunked_comparison_sums_to_the_whole(
    tiny_checkpoint, tiny_onnx, tmp_path, monkeypatch, backend
) -> None:
    """The images run in chunks that fit ``CHUNK_BYTES`` and the errors are summed: one image per
    chunk reports what the largest chunks report, and no chunk exceeds the budget."""
    from edgevit.check import layerwise
    from edgevit.models.load import load
    from edgevit.recipe.schema import QuantizeStage
    from edgevit.targets import TARGETS, LowerRequest

    cfg = load(checkpoint=tiny_checkpoint).config
    x = np.random.default_rng(1).uniform(-1, 1, (9, 3, 32, 32)).astype(np.float32)
    stage = QuantizeStage(stage="quantize", equalize="off")
    artifact = TARGETS.get(backend).lower(LowerRequest(tiny_onnx, "int8", cfg, {}, stage, x), tmp_path)
    sizes: dict[int, list[int]] = {}  # chunk sizes by probe (the float model, an ONNX artifact)
    probe = layerwise._OnnxProbe.__call__

    def spy(self, chunk):
        sizes.setdefault(id(self), []).append(len(chunk))
        return probe(self, chunk)

    monkeypatch.setattr(layerwise._OnnxProbe, "__call__", spy)
    whole = layerwise.summary(tiny_onnx, artifact, x, backend)["layers"]
    # one image to learn the size of an image's tensors, then the rest fit the default budget
    assert all(s == [1, 8] for s in sizes.values())
    sizes.clear()
    monkeypatch.setattr(layerwise, "CHUNK_BYTES", 1)
    single = layerwise.summary(tiny_onnx, artifact, x, backend)["layers"]
    assert sizes and all(s == [1] * 9 for s in sizes.values())
    assert [r["layer"] for r in single] == [r["layer"] for r in whole]
    assert any(r["quantized"] and r["local_sqnr_db"] < 150 for r in whole)
    for a, b in zip(whole, single, strict=True):
        for field in ("sqnr_in", "sqnr_out", "local_sqnr_db", "cosine_out"):
            assert a[field] == pytest.approx(b[field], abs=0.02), (a["layer"], field)
