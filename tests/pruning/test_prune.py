"""Structured pruning: the cut model computes exactly what the masked original computes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.data.stream import Tensors
from edgevit.errors import ModelLoadError, RecipeError
from edgevit.models.config import ModelConfig
from edgevit.models.load import config_for, create, load, save
from edgevit.models.profile import count_macs, count_params
from edgevit.pruning import prune, surgery
from edgevit.pruning.structure import Geometry, blocks, head_scales
from edgevit.recipe.schema import PruneStage

NAME = "vit_plus_tiny_patch8_32"


def _model(depth: int = 2, **kw) -> tuple[torch.nn.Module, ModelConfig]:
    torch.manual_seed(0)
    model = create(NAME, num_classes=4, depth=depth, **kw).eval()
    return model, config_for(NAME, model, model_kwargs={"depth": depth, **kw})


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)


def _masked(model: torch.nn.Module, block: int, heads: list[int], neurons: list[int]) -> torch.nn.Module:
    """A copy with the given heads' value rows and neurons' fc1 rows zeroed (they then output 0)."""
    import copy

    m = copy.deepcopy(model)
    view = blocks(m)[block]
    hd, h = view.attn.head_dim, view.heads
    with torch.no_grad():
        qkv = view.attn.qkv.weight.view(3, h, hd, -1)
        bias = view.attn.qkv.bias.view(3, h, hd)
        for i in heads:
            qkv[2, i] = 0
            bias[2, i] = 0
        for n in neurons:
            view.fc1.weight[n] = 0
            view.fc1.bias[n] = 0
    return m


@pytest.mark.parametrize("gone_heads", [[1], [0, 2], [2]])
def test_cutting_heads_and_neurons_equals_zeroing_them(gone_heads: list[int]) -> None:
    model, cfg = _model()
    x, _ = _data(4)
    gone_n = [0, 5, 100, 700]
    keep_h = [i for i in range(3) if i not in gone_heads]
    keep_n = [i for i in range(768) if i not in gone_n]
    cut, new_cfg = surgery.apply(model, cfg, [0, 1], {1: keep_h}, {1: keep_n})
    with torch.no_grad():
        expected = _masked(model, 1, gone_heads, gone_n)(x)
        got = cut(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert new_cfg.model_kwargs["block_mlp"] == [768, 764]
    # scales (1, 2, 4) hold heads 0, 1, 2: the counts per scale follow the heads that stayed
    assert new_cfg.model_kwargs["block_heads"][1] == [int(i in keep_h) for i in range(3)]
    assert head_scales(blocks(cut)[1].attn) == [
        s for i, s in zip(range(3), (1, 2, 4), strict=True) if i in keep_h
    ]


def test_removing_a_block_equals_skipping_it() -> None:
    model, cfg = _model(depth=3)
    x, _ = _data(4)
    cut, new_cfg = surgery.apply(model, cfg, [0, 2], {}, {})
    model.blocks[1] = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(cut(x), model(x))
    assert len(new_cfg.model_kwargs["block_heads"]) == 2


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"allocation": "uniform"},
        {"importance": "magnitude"},
        {"steps": 2, "remove_blocks": 1},
        {"remove_heads": 1},
    ],
)
def test_prune_meets_the_mac_budget_and_reloads(settings: dict, tmp_path: Path) -> None:
    model, cfg = _model()
    x, y = _data()
    stage = PruneStage(stage="prune", target={"macs": 0.5}, **settings)
    result = prune(model, cfg, stage, Tensors(x, y))
    macs = count_macs(result.model, cfg.input_size)
    assert macs <= 0.5 * count_macs(model, cfg.input_size)
    assert result.summary["after"]["macs"] == macs
    assert all(w % 8 == 0 for w in result.summary["block_mlp"])
    save(result.model, result.config, tmp_path)
    again = load(checkpoint=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), result.model(x))


def test_params_budget_and_analytic_costs_match_counts() -> None:
    model, cfg = _model()
    x, y = _data()
    result = prune(model, cfg, PruneStage(stage="prune", target={"params": 0.8}, mlp=False), Tensors(x, y))
    assert count_params(result.model) <= 0.8 * count_params(model)
    # the cost model used to plan equals what the counters measure: one head less, in MACs and params
    geo = Geometry.of(model)
    cut, _ = surgery.apply(model, cfg, [0, 1], {0: [0, 1]}, {})
    assert count_macs(model, cfg.input_size) - count_macs(cut, cfg.input_size) == geo.head_cost(4, "macs")
    assert count_params(model) - count_params(cut) == geo.head_cost(4, "params")


def test_taylor_removes_dead_neurons_first_and_keeps_the_function() -> None:
    """Neurons whose output weights are zero cannot matter: Taylor scores them 0 and cuts them first."""
    model, cfg = _model()
    with torch.no_grad():
        for view in blocks(model):
            view.fc2.weight[:, :400] = 0  # neurons 0..399 of every block are dead
    x, y = _data(16)
    result = prune(model, cfg, PruneStage(stage="prune", target={"macs": 0.75}, heads=False), Tensors(x, y))
    assert all(w >= 768 - 400 for w in result.summary["block_mlp"])
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"remove_heads": 3}, "remove_heads: cannot remove 3 heads per block, the model has 3"),
        ({"remove_blocks": 2}, "remove_blocks: cannot remove 2 of 2 blocks"),
        ({"min_heads": 4}, "min_heads: 4 is more than the 3 heads"),
        ({"target": {"macs": 0.01}}, r"stages\[0\].target: macs 0.01 cannot be met"),
    ],
)
def test_impossible_settings_are_clear_errors(settings: dict, message: str) -> None:
    model, cfg = _model()
    x, y = _data()
    stage = PruneStage(**{"stage": "prune", "target": {"macs": 0.5}, **settings})
    with pytest.raises(RecipeError, match=message):
        prune(model, cfg, stage, Tensors(x, y), where="stages[0]")


def test_only_vit_plus_models_are_pruned() -> None:
    import timm

    other = timm.create_model("vit_tiny_patch16_224", num_classes=4, depth=1)
    cfg = config_for("vit_tiny_patch16_224", other)
    with pytest.raises(ModelLoadError, match="pruning needs a ViT-Plus"):
        prune(other, cfg, PruneStage(stage="prune", target={"macs": 0.5}), Tensors(*_data(2)))


def test_pruned_model_exports_and_runs_on_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from edgevit.stages.export import export_onnx

    model, cfg = _model()
    x, y = _data()
    result = prune(model, cfg, PruneStage(stage="prune", target={"macs": 0.5}, steps=2), Tensors(x, y))
    path = export_onnx(result.model, cfg.input_size, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[:3].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, result.model(x[:3]).numpy(), atol=1e-4)


def test_importance_scored_on_streamed_images_prunes_the_same(tmp_path: Path) -> None:
    """Calibration images read by a loader worker score exactly as the same images in memory."""
    from edgevit.data import DataSpec, open_data
    from edgevit.data.stream import Images
    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", {"a": 7, "b": 6, "c": 6, "d": 5}, size=20)
    model, cfg = _model()
    cfg = cfg.model_copy(update={"mean": (0.5,) * 3, "std": (0.5,) * 3, "class_names": list("abcd")})
    source = open_data(DataSpec(source=str(root), split="all"), list("abcd"))
    stage = PruneStage(stage="prune", target={"macs": 0.5}, remove_blocks=1, calibration_batch=5)
    held = prune(model, cfg, stage, Images(source, cfg))
    streamed = prune(model, cfg, stage, Images(source, cfg, workers=1, cache_bytes=0))
    assert held.summary == streamed.summary
    for (name, a), b in zip(
        held.model.state_dict().items(), streamed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
