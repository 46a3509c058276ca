"""Accuracy budget: the fewest most-sensitive layers kept float until an INT8 target meets it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import edgevit
from tests.conftest import tiny_recipe, write_recipe

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def build(tiny_checkpoint: Path, root: Path, quantize: dict[str, Any], targets: list[dict[str, Any]]) -> Any:
    recipe = tiny_recipe(
        tiny_checkpoint,
        targets,
        name="fallback",
        evaluation=32,
        quantize=quantize,
        check={"runs": 3, "warmup": 1},
    )
    return edgevit.build(write_recipe(root / "recipe.yaml", recipe), root / "b")


ORT = {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"}
OV = {"name": "ov-int8", "backend": "openvino", "precision": "int8"}


def test_budget_keeps_the_fewest_most_sensitive_layers_float(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # An impossible budget: best effort with at most 2 float layers, the 2 worst by local SQNR.
    report = build(
        tiny_checkpoint, tmp_path, {"accuracy_budget": {"min_sqnr_db": 500, "max_float_layers": 2}}, [ORT]
    )
    f = report.target("ort-int8")["fallback"]
    assert f["applied"] and not f["met"] and f["tried"][0]["float_layers"] == []
    ranking = [s["layer"] for s in f["sensitivity"]]
    # Walking the ranking: a layer stays float only if that brought the scores closer to the budget.
    kept: list[str] = []
    closest = f["tried"][0]
    for t in f["tried"][1:]:
        assert t["float_layers"][:-1] == kept and t["float_layers"][-1] in ranking
        if t.get("rejected"):
            assert t["shortfall"] >= closest["shortfall"] - 1e-6
        else:
            assert t["shortfall"] < closest["shortfall"]
            kept, closest = t["float_layers"], t
    assert f["float_layers"] == kept and 1 <= len(kept) <= 2
    # Each candidate adds the next layer of the ranking, in order, none skipped.
    assert [t["float_layers"][-1] for t in f["tried"][1:]] == ranking[: len(f["tried"]) - 1]
    assert closest["sqnr_db"] > f["tried"][0]["sqnr_db"]  # keeping the worst layers float helps
    assert report.target("ort-int8")["accuracy"]["sqnr_db"] == pytest.approx(closest["sqnr_db"], abs=0.01)
    # The kept layers are float in the final artifact: no quantizer on their inputs.
    layers = {x["layer"]: x for x in report.target("ort-int8")["layerwise"]["layers"]}
    assert all(not layers[name]["quantized"] for name in f["float_layers"])

    # A budget one float layer meets: exactly that layer is chosen, and the build's numbers meet it.
    reachable = f["tried"][1]["sqnr_db"] - 0.01
    report = build(tiny_checkpoint, tmp_path, {"accuracy_budget": {"min_sqnr_db": reachable}}, [ORT, OV])
    f = report.target("ort-int8")["fallback"]
    assert f["met"] and f["float_layers"] == [f["sensitivity"][0]["layer"]]
    assert report.target("ort-int8")["accuracy"]["sqnr_db"] >= reachable
    ov = report.target("ov-int8")["fallback"]
    assert ov["applied"] and (ov["met"] or len(ov["float_layers"]) == 8)
    assert "Accuracy budget" in (report.directory / "report.md").read_text()


def test_explicit_float_layers(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report = build(tiny_checkpoint, tmp_path, {"float_layers": ["blocks.0.mlp.fc2", "head"]}, [ORT, OV])
    for name in ("ort-int8", "ov-int8"):
        layers = {x["layer"]: x["quantized"] for x in report.target(name)["layerwise"]["layers"]}
        assert layers["blocks.0.mlp.fc1"] and not layers["blocks.0.mlp.fc2"], name
    report = build(tiny_checkpoint, tmp_path, {"float_layers": ["blocks.9.mlp"]}, [ORT])
    t = report.target("ort-int8")
    assert (
        t["status"] == "failed"
        and "float_layers names blocks.9.mlp, not a layer of this model" in t["reason"]
    )


def test_measured_sensitivity_ranks_layers_by_the_logit_sqnr_they_cost(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # One layer damaged on purpose (its input scale x64): keeping it float gains the most.
    damaged = {**ORT, "options": {"activation_scale_factors": {"blocks.0.mlp.fc1": 64}}}
    budget = {"min_sqnr_db": 500, "max_float_layers": 1, "ranking": "measured"}
    report = build(tiny_checkpoint, tmp_path, {"accuracy_budget": budget}, [damaged])
    f = report.target("ort-int8")["fallback"]
    gains = [x["gain_db"] for x in f["sensitivity"]]
    assert f["ranking"] == "measured" and len(gains) == 5  # qkv, proj, fc1, fc2, head
    assert gains == sorted(gains, reverse=True)
    assert f["sensitivity"][0]["layer"] == "blocks.0.mlp.fc1" and gains[0] > 10 > gains[1]
    assert f["float_layers"] == ["blocks.0.mlp.fc1"]
    assert f["tried"][1]["sqnr_db"] > f["tried"][0]["sqnr_db"] + 10  # on the evaluation set too
    singles = report.directory / "search" / "ort-int8" / "sensitivity"
    assert sorted(p.name for p in singles.iterdir()) == ["0", "1", "2", "3", "4"]
    assert "most sensitive" in (report.directory / "report.md").read_text()

    budget["ranking"] = "alone"  # no extra builds: the layer-wise comparison's order
    (tmp_path / "alone").mkdir()
    report = build(tiny_checkpoint, tmp_path / "alone", {"accuracy_budget": budget}, [damaged])
    f = report.target("ort-int8")["fallback"]
    assert f["ranking"] == "alone" and "gain_db" not in f["sensitivity"][0]
    assert not (report.directory / "search" / "ort-int8" / "sensitivity").exists()


def test_tflite_budget_uses_the_measured_ranking(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    from edgevit.targets import TARGETS

    tfl = {"name": "tfl-int8", "backend": "tflite", "precision": "int8"}
    budget = {"min_sqnr_db": 500, "max_float_layers": 1, "ranking": "measured"}
    report = build(tiny_checkpoint, tmp_path, {"accuracy_budget": budget}, [tfl])
    t = report.target("tfl-int8")
    f = t["fallback"]
    assert t["status"] == "ok" and f["ranking"] == "measured" and len(f["float_layers"]) == 1
    assert {x["layer"] for x in f["sensitivity"]} == {
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "head"
    }  # fmt: skip
    assert f["float_layers"] == [f["sensitivity"][0]["layer"]]
    artifact = report.directory / t["artifact"]
    quantized = TARGETS.get("tflite").quantized_layers(artifact, report.directory / "export" / "model.onnx")
    assert f["float_layers"][0] not in quantized and len(quantized) == 4

    budget["ranking"] = "alone"  # needs the layer-wise comparison, which .tflite files do not have
    (tmp_path / "alone").mkdir()
    t = build(tiny_checkpoint, tmp_path / "alone", {"accuracy_budget": budget}, [tfl]).target("tfl-int8")
    assert t["status"] == "failed" and "ranking: measured" in t["reason"]


def test_simulated_ranking_needs_no_builds_and_finds_the_damaged_layer(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # One LayerNorm channel made 1000x larger (the next Linear's column 1000x smaller): the float
    # model is the same, but per-tensor INT8 of fc1's input loses nearly every level to it.
    import torch

    from edgevit.models.load import load, save

    loaded = load(checkpoint=tiny_checkpoint)
    with torch.no_grad():
        loaded.model.blocks[0].norm2.weight[3] *= 1000
        loaded.model.blocks[0].norm2.bias[3] *= 1000
        loaded.model.blocks[0].mlp.fc1.weight[:, 3] /= 1000
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    save(loaded.model, loaded.config, damaged)
    budget = {"min_sqnr_db": 500, "max_float_layers": 1}  # the default ranking: simulated
    tfl = {"name": "tfl-int8", "backend": "tflite", "precision": "int8"}
    # equalize and rotate off, or either would fold the damage away before the ranking sees it
    settings = {"accuracy_budget": budget, "equalize": "off", "rotate": "off"}
    report = build(damaged, tmp_path, settings, [ORT, tfl])
    for name in ("ort-int8", "tfl-int8"):
        f = report.target(name)["fallback"]
        gains = [x["gain_db"] for x in f["sensitivity"]]
        assert f["ranking"] == "simulated" and len(gains) == 5, name
        assert gains == sorted(gains, reverse=True)
        assert f["float_layers"] == [f["sensitivity"][0]["layer"]]
        assert not (report.directory / "search" / name / "sensitivity").exists()  # no build per layer
    # ONNX Runtime quantizes fc1's input: the damaged layer comes first. The TFLite converter folds
    # the norm's scale into fc1's weights, where the two factors cancel: no damage there at all.
    ort = report.target("ort-int8")["fallback"]
    tfl = report.target("tfl-int8")["fallback"]
    assert tfl["tried"][0]["sqnr_db"] > ort["tried"][0]["sqnr_db"] + 10
    assert ort["sensitivity"][0]["layer"] == "blocks.0.mlp.fc1" and ort["sensitivity"][0]["gain_db"] > 10
    assert ort["tried"][1]["sqnr_db"] > ort["tried"][0]["sqnr_db"] + 10  # on the evaluation set too
