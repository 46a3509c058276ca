"""Dense heads on ViT-Plus: shapes, checkpoints, standard-op ONNX that matches torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.models.dense import default_blocks
from edgevit.models.load import create_configured, load, save

TINY = {"depth": 2}


def _model(task: str, head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = create_configured(
        "vit_plus_tiny_patch4_32",
        6 if task == "segmentation" else 1,
        None,
        {},
        {**TINY, "task": task, "dense_head": head},
    )
    return model.eval()


@pytest.mark.parametrize(
    ("task", "head", "channels"),
    [("segmentation", "linear", 6), ("segmentation", "mlp", 6), ("depth", "linear", 1), ("depth", "dpt", 1)],
)
def test_dense_heads_give_one_map_per_input_pixel(task: str, head: str, channels: int) -> None:
    out = _model(task, head)(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, channels, 32, 32)


def test_default_blocks_spread_over_the_depth() -> None:
    assert default_blocks("linear", 12) == (11,)
    assert default_blocks("mlp", 12) == (2, 5, 8, 11)
    assert default_blocks("dpt", 2) == (0, 1)


def test_bad_dense_settings_are_refused() -> None:
    from edgevit.errors import ModelLoadError
    from edgevit.models.load import create

    with pytest.raises(ModelLoadError, match="unknown task"):
        create("vit_plus_tiny_patch4_32", task="keypoints")
    with pytest.raises(ModelLoadError, match="dense_blocks"):
        create("vit_plus_tiny_patch4_32", task="depth", num_classes=1, depth=2, dense_blocks=(5,))
    with pytest.raises(ModelLoadError, match="unknown dense_head"):
        create("vit_plus_tiny_patch4_32", task="depth", num_classes=1, dense_head="fpn")


def test_a_dense_checkpoint_loads_as_what_it_was(tmp_path: Path) -> None:
    from edgevit.models.vit_plus import VisionTransformerPlus

    model, config = create_configured(
        "vit_plus_tiny_patch4_32",
        6,
        ["bg", "a", "b", "c", "d", "e"],
        {},
        {**TINY, "task": "segmentation", "dense_head": "mlp"},
    )
    save(model.eval(), config, tmp_path)
    loaded = load(checkpoint=tmp_path)
    assert loaded.config.task == "segmentation"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert isinstance(VisionTransformerPlus.from_pretrained(str(tmp_path)), VisionTransformerPlus)


@pytest.mark.parametrize(("task", "head"), [("segmentation", "mlp"), ("depth", "dpt")])
def test_dense_export_uses_standard_ops_and_matches_torch(tmp_path: Path, task: str, head: str) -> None:
    import onnx
    import onnxruntime as ort

    from edgevit.stages.export import export_onnx

    model = _model(task, head)
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Resize" in ops and "Conv" in ops
    for node in graph.node:
        if node.op_type == "Resize":  # bilinear, align_corners=False
            attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
            assert attrs["mode"] == "linear" and attrs["coordinate_transformation_mode"] == "half_pixel"
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-4)
