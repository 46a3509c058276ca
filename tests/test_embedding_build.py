"""Users' timm backbones as they ship: headless DINOv2 with registers and a CLIP-style ViT
(``norm_pre``), 1 block and random weights, saved at one size and built at another
(``model.input_size``) on every backend, scored by the embedding task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgevit
from edgevit.models.load import config_for, create, save
from tests.test_dense_build import ALL_BACKENDS

BACKBONES = {
    # timm name, kwargs (tiny), the size it is saved at, the size the recipe builds, quantize settings
    # (the DINOv2 one rotated: a feature head and a Hadamard before fc2 on every backend)
    "vit_small_patch14_reg4_dinov2": (
        {"depth": 1, "embed_dim": 64, "num_heads": 2},
        56,
        28,
        {"rotate": "on"},
    ),
    "vit_base_patch16_clip_224": ({"depth": 1, "embed_dim": 64, "num_heads": 2}, 64, 32, {}),
}


def _backbone(out: Path, name: str) -> Path:
    kwargs, saved, _, _ = BACKBONES[name]
    torch.manual_seed(0)
    model = create(name, num_classes=0, img_size=saved, **kwargs)
    cfg = config_for(name, model, model_kwargs={**kwargs, "img_size": saved})
    save(model.eval(), cfg, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_headless_backbone_builds_at_another_size_on_every_backend(tmp_path: Path, name: str) -> None:
    built = BACKBONES[name][2]
    recipe = {
        "name": "backbone",
        "model": {"checkpoint": str(_backbone(tmp_path / "model", name)), "input_size": built},
        "data": {
            "calibration": {"source": "shapes", "split": "train", "count": 16},
            "evaluation": {"source": "shapes", "split": "test", "count": 24},
        },
        "stages": [{"stage": "quantize", **BACKBONES[name][3]}],
        "targets": ALL_BACKENDS,
        "gates": {"min_embedding_cosine": 0.9, "min_recall_at_5": 0.5},
        "check": {"runs": 3, "warmup": 1, "layerwise_samples": 0},
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    report = edgevit.build(path, tmp_path / "b")
    doc = report.data
    assert doc["task"] == "embedding" and set(doc["reference"]["scores"]) == {"label_recall_at_1"}
    by_name = {t["name"]: t for t in doc["targets"]}
    for t in ALL_BACKENDS:
        entry = by_name[t["name"]]
        assert entry["status"] == "ok", (t["name"], entry.get("reason"))
        acc = entry["accuracy"]
        assert acc["samples"] == 24 and acc["cosine"] > 0.9, (t["name"], acc)
        assert {"sqnr_db", "neighbour_agreement", "recall_at_5", "label_recall_at_1"} <= set(acc)
    assert by_name["ort-fp32"]["accuracy"]["sqnr_db"] > 60
    if BACKBONES[name][3].get("rotate") == "on":  # every INT8 grid the simulator models got the rotated model
        grids = {n: e["equalization"] for n, e in by_name.items() if "scheme" in e.get("equalization", {})}
        assert {"ort-int8", "ov-int8", "trt-int8", "tfl-int8"} <= set(grids)
        assert all(g["rotation"]["residual"] and g["rotation"]["fc2_hadamard"] for g in grids.values()), grids
    assert by_name["ort-fp32"]["accuracy"]["neighbour_agreement"] == 1.0
    assert by_name["trt-int8"]["where"].startswith("simulated:")
    # the embedding task's gates (and latency's) apply, not top-1's
    assert {g["name"] for g in doc["gates"]} == {"min_embedding_cosine", "min_recall_at_5"}
    assert report.passed, [g for g in doc["gates"] if not g["passed"]]
    md = (tmp_path / "b" / "report.md").read_text()
    assert "| feature SQNR dB |" in md and "embedding: label recall@1 **" in md
    # the model was built at the recipe's size: the exported graph takes it
    import onnx

    graph = onnx.load(tmp_path / "b" / by_name["ort-fp32"]["artifact"], load_external_data=False).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[-2:] == [built, built]
