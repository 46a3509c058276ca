"""Dense builds: a segmentation and a depth ViT-Plus (1 block, random weights) on every backend,
scored with the task's metrics, gated, re-checked by validate and diagnosed by compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgevit
from edgevit.data.scenes import SEG_CLASSES
from edgevit.models.load import config_for, create, save

MODEL = "vit_plus_tiny_patch4_32"


def _dense_checkpoint(out: Path, task: str, head: str) -> Path:
    torch.manual_seed(0)
    kwargs = {"depth": 1, "task": task, "dense_head": head}
    classes = len(SEG_CLASSES) if task == "segmentation" else 1
    model = create(MODEL, num_classes=classes, **kwargs)
    if task == "depth":  # a depth model predicts metres: start near the scenes' depths
        last = [m for m in model.dense_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.bias.fill_(6.0)
    names = list(SEG_CLASSES) if task == "segmentation" else None
    cfg = config_for(MODEL, model, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
    save(model.eval(), cfg.model_copy(update={"class_names": names, "model_kwargs": kwargs}), out)
    return out


def _recipe(tmp_path: Path, task: str, head: str, targets: list[dict], gates: dict) -> Path:
    source = "shapes-seg" if task == "segmentation" else "shapes-depth"
    recipe = {
        "name": f"dense-{task}",
        "model": {"checkpoint": str(_dense_checkpoint(tmp_path / "model", task, head))},
        "data": {
            "calibration": {"source": source, "split": "train", "count": 8},
            "evaluation": {"source": source, "split": "test", "count": 12},
        },
        "stages": [{"stage": "quantize"}],
        "targets": targets,
        "gates": gates,
        "check": {"runs": 3, "warmup": 1, "layerwise_samples": 4},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


ALL_BACKENDS = [
    {"name": "ort-fp32", "backend": "onnxruntime", "precision": "fp32"},
    {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
    {"name": "ov-int8", "backend": "openvino", "precision": "int8"},
    {"name": "trt-int8", "backend": "tensorrt", "precision": "int8"},
    {"name": "tfl-int8", "backend": "tflite", "precision": "int8"},
    {"name": "coreml-int8", "backend": "coreml", "precision": "int8"},
]


@pytest.mark.slow
def test_segmentation_builds_on_every_backend_and_a_damaged_layer_is_named(tmp_path: Path, capsys) -> None:
    damaged = {
        "name": "ort-int8-damaged",
        "backend": "onnxruntime",
        "precision": "int8",
        "options": {"activation_scale_factors": {"blocks.0.mlp.fc2": 0.02}},
    }
    gates = {"max_miou_drop": 5.0, "min_pixel_agreement": 0.9}
    path = _recipe(tmp_path, "segmentation", "dpt", [*ALL_BACKENDS, damaged], gates)
    recipe = json.loads(path.read_text())
    recipe["stages"] = [{"stage": "quantize", "decoder": True}]  # the decoder's Convs are INT8 too
    path.write_text(json.dumps(recipe))
    report = edgevit.build(path, tmp_path / "b")
    doc = report.data
    assert doc["task"] == "segmentation" and set(doc["reference"]["scores"]) == {"miou", "pixel_accuracy"}
    by_name = {t["name"]: t for t in doc["targets"]}
    for t in ALL_BACKENDS:
        entry = by_name[t["name"]]
        assert entry["status"] == "ok", (t["name"], entry.get("reason"))
        acc = entry["accuracy"]
        assert acc["pixel_agreement"] >= 0.9 and acc["samples"] == 12, (t["name"], acc)
    assert by_name["trt-int8"]["where"].startswith("simulated:")
    assert by_name["coreml-int8"]["where"] == "simulated:mil-reference"
    assert by_name["ort-fp32"]["accuracy"]["pixel_agreement"] == 1.0
    model = create(MODEL, num_classes=len(SEG_CLASSES), depth=1, task="segmentation", dense_head="dpt")
    decoder_convs = sum(
        1 for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n.startswith("dense_head.")
    )
    # the decoder's Convs are quantized, the patch embedding's is not (it is out of scope)
    assert _quantized_convs(tmp_path / "b" / by_name["ort-int8"]["artifact"]) == decoder_convs
    # only the task's gates (and latency's) apply: no top-1 gate on a segmentation target
    names = {g["name"] for g in doc["gates"]}
    assert names == {"max_miou_drop", "min_pixel_agreement"}
    failed = {(g["target"], g["name"]) for g in doc["gates"] if not g["passed"]}
    assert ("ort-int8-damaged", "min_pixel_agreement") in failed and not report.passed
    assert all(target == "ort-int8-damaged" for target, _ in failed)
    md = (tmp_path / "b" / "report.md").read_text()
    assert "| mIoU % | mIoU drop (pts) |" in md and "segmentation: mIoU **" in md

    from edgevit.cli import main

    capsys.readouterr()
    assert main(["compare", str(tmp_path / "b"), "--target", "ort-int8-damaged", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["ort-int8-damaged"]
    assert found["layers"][0]["layer"] == "blocks.0.mlp.fc2"

    from edgevit.check.validate import validate

    checked = validate(tmp_path / "b")
    again = {t["name"]: t for t in checked.targets}
    assert again["ort-int8"]["accuracy"] == by_name["ort-int8"]["accuracy"]
    assert not checked.passed and "mIoU" in checked.markdown()
    assert 'name="min_pixel_agreement"' in checked.junit()


@pytest.mark.slow
def test_depth_builds_and_scores_against_the_float_model(tmp_path: Path) -> None:
    targets = [ALL_BACKENDS[0], ALL_BACKENDS[1], ALL_BACKENDS[4]]
    gates = {"max_depth_absrel_vs_float": 0.05, "min_depth_pearson": 0.9}
    report = edgevit.build(_recipe(tmp_path, "depth", "mlp", targets, gates), tmp_path / "b")
    doc = report.data
    assert doc["task"] == "depth" and report.passed, doc["gates"]
    for t in doc["targets"]:
        acc = t["accuracy"]
        assert t["status"] == "ok" and np.isfinite(acc["absrel"]) and 0 <= acc["delta1"] <= 1
        assert acc["absrel_vs_float"] < 0.05 and acc["pearson"] > 0.9
    assert {g["name"] for g in doc["gates"]} == {
        "max_depth_absrel_increase",
        "max_depth_absrel_vs_float",
        "min_depth_pearson",
    }


def test_dense_models_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    from edgevit.errors import RecipeError

    path = _recipe(tmp_path, "segmentation", "linear", ALL_BACKENDS[1:2], {})
    recipe = json.loads(path.read_text())
    recipe["data"]["train"] = recipe["data"]["calibration"]
    refused = {
        "remove_blocks: the segmentation head reads": [
            {"stage": "prune", "target": {"macs": 0.9}, "remove_blocks": 1},
            {"stage": "quantize"},
        ],
        "distill_token is for classification": [
            {"stage": "distill", "epochs": 1, "distill_token": True, "student": MODEL},
            {"stage": "quantize"},
        ],
    }
    for message, stages in refused.items():
        recipe["stages"] = stages
        path.write_text(json.dumps(recipe))
        with pytest.raises(RecipeError, match=message):  # exit 2, before anything trains
            edgevit.build(path, tmp_path / "b")
    recipe["stages"] = [{"stage": "quantize"}]
    recipe["data"]["evaluation"]["source"] = "shapes"
    path.write_text(json.dumps(recipe))
    with pytest.raises(edgevit.EdgeVitError, match="is for classification, the model for segmentation"):
        edgevit.build(path, tmp_path / "b")


@pytest.mark.slow
def test_segmentation_prunes_and_distills_scored_by_the_task(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "segmentation", "mlp", [ALL_BACKENDS[1]], {"max_compression_miou_drop": 100})
    recipe = json.loads(path.read_text())
    recipe["data"]["train"] = {"source": "shapes-seg", "split": "train", "count": 16}
    recipe["stages"] = [
        {"stage": "prune", "target": {"macs": 0.8}, "steps": 1, "calibration_batch": 4},
        {"stage": "distill", "epochs": 1, "batch_size": 8},
        {"stage": "quantize"},
    ]
    path.write_text(json.dumps(recipe))
    report = edgevit.build(path, tmp_path / "b")
    doc = report.data
    ref, pruned, distilled = doc["reference"], *doc["stages"]
    assert pruned["macs"] <= 0.8 * ref["macs"] and distilled["macs"] == pruned["macs"]
    for stage in (pruned, distilled):  # the task's scores, against the maps and the reference
        assert 0 <= stage["miou"] <= 100 and 0 <= stage["pixel_agreement"] <= 1 and "top1" not in stage
        assert stage["miou_drop"] == pytest.approx(ref["scores"]["miou"] - stage["miou"], abs=1e-3)
    (gate,) = [g for g in doc["gates"] if g["target"].startswith("stage:")]
    assert gate["name"] == "max_compression_miou_drop" and gate["value"] == pytest.approx(
        distilled["miou_drop"]
    )
    # the target is scored against the distilled model, whose outputs are in the lowered bundle
    from edgevit.check.bundle import open_dense
    from edgevit.models.load import load, logits_of

    x, maps, outputs = open_dense(tmp_path / "b" / "eval-lowered" / "bundle.npz")
    student = load(checkpoint=tmp_path / "b" / doc["lowered"]["step"]).model
    np.testing.assert_allclose(outputs[:4], logits_of(student, x[:4], 4), rtol=1e-4, atol=1e-4)
    assert maps.shape == (12, 32, 32)
    target = report.target("ort-int8")
    assert target["status"] == "ok" and target["accuracy"]["pixel_agreement"] > 0.9
    md = (tmp_path / "b" / "report.md").read_text()
    assert "float mIoU %" in md and "float mIoU drop" in md and "| distill |" in md
    from edgevit.check.validate import validate

    checked = validate(tmp_path / "b")
    assert checked.targets[0]["accuracy"] == target["accuracy"] and checked.passed


@pytest.mark.slow
def test_depth_distills_into_a_named_student(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "depth", "dpt", [ALL_BACKENDS[0]], {"max_compression_absrel_increase": 10})
    recipe = json.loads(path.read_text())
    recipe["data"]["train"] = {"source": "shapes-depth", "split": "train", "count": 16}
    student = "vit_plus_tiny_patch8_32"  # named: it takes the teacher's task and head
    recipe["stages"] = [{"stage": "distill", "epochs": 1, "batch_size": 8, "student": student}]
    path.write_text(json.dumps(recipe))
    doc = edgevit.build(path, tmp_path / "b").data
    (stage,) = doc["stages"]
    assert doc["lowered"]["model"] == student and np.isfinite(stage["absrel"])
    assert stage["absrel_increase"] == pytest.approx(
        stage["absrel"] - doc["reference"]["scores"]["absrel"], abs=1e-3
    )
    assert [g["name"] for g in doc["gates"] if g["target"].startswith("stage:")] == [
        "max_compression_absrel_increase"
    ]
    assert doc["targets"][0]["status"] == "ok"


def test_a_dense_accuracy_budget_keeps_layers_float(tmp_path: Path) -> None:
    budget = {"min_pixel_agreement": 0.99999, "max_float_layers": 2, "ranking": "alone"}
    targets = [ALL_BACKENDS[1], {**ALL_BACKENDS[1], "name": "ort-int8-top1", "gates": {"max_top1_drop": 1}}]
    path = _recipe(tmp_path, "segmentation", "linear", targets, {})
    recipe = json.loads(path.read_text())
    recipe["stages"] = [{"stage": "quantize", "accuracy_budget": budget}]
    path.write_text(json.dumps(recipe))
    report = edgevit.build(path, tmp_path / "b")
    entry = report.target("ort-int8")
    fallback = entry["fallback"]
    assert fallback["applied"] and fallback["tried"][0]["float_layers"] == []
    assert "pixel_agreement" in fallback["tried"][0] and "top1_drop" not in fallback["tried"][0]
    # every candidate was scored with the task's own budget: met exactly when nothing falls short
    assert all(t["met"] == (t["shortfall"] == 0) for t in fallback["tried"])
    assert not fallback["met"] or fallback["tried"][-1]["met"]
    # a target-level top-1 gate on a segmentation model is another task's: it does not apply
    assert not any(
        g["target"] == "ort-int8-top1" and g["name"] == "max_top1_drop" for g in report.data["gates"]
    )

    recipe["stages"] = [{"stage": "quantize", "accuracy_budget": {"max_top1_drop": 0.5}}]
    path.write_text(json.dumps(recipe))
    wrong = edgevit.build(path, tmp_path / "c").target("ort-int8")
    assert wrong["status"] == "failed"
    assert "accuracy_budget.max_top1_drop does not apply to a segmentation model" in wrong["reason"]


@pytest.mark.slow
def test_segmentation_qat_trains_against_the_int8_grid(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "segmentation", "dpt", [ALL_BACKENDS[1]], {})
    recipe = json.loads(path.read_text())
    recipe["data"]["train"] = {"source": "shapes-seg", "split": "train", "count": 16}
    recipe["stages"] = [{"stage": "qat", "epochs": 1, "batch_size": 8}, {"stage": "quantize"}]
    path.write_text(json.dumps(recipe))
    target = edgevit.build(path, tmp_path / "b").target("ort-int8")
    qat = target["qat"]
    assert target["status"] == "ok" and qat["applied"] and "float_logits" not in qat
    assert set(qat["float_scores"]) >= {"miou", "miou_drop", "pixel_agreement"}
    assert np.isfinite(qat["simulated_sqnr_db"]["before"]) and np.isfinite(qat["simulated_sqnr_db"]["after"])
    assert 0 <= target["accuracy"]["pixel_agreement"] <= 1


@pytest.mark.slow
def test_a_missed_depth_budget_recovers_with_qat(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "depth", "dpt", [ALL_BACKENDS[1]], {})
    recipe = json.loads(path.read_text())
    recipe["data"]["train"] = {"source": "shapes-depth", "split": "train", "count": 16}
    budget = {"min_depth_pearson": 0.9999999, "recover": "qat"}  # post-training INT8 cannot meet it
    recipe["stages"] = [
        {"stage": "qat", "epochs": 1, "batch_size": 8},
        {"stage": "quantize", "accuracy_budget": budget},
    ]
    path.write_text(json.dumps(recipe))
    target = edgevit.build(path, tmp_path / "b").target("ort-int8")
    fallback = target["fallback"]
    assert fallback["recover"] == "qat" and fallback["needed"] == "qat"
    assert fallback["post_training"]["pearson"] < 0.9999999 and "top1_drop" not in fallback["post_training"]
    assert target["qat"]["applied"] and "absrel" in target["qat"]["float_scores"]
    assert fallback["met"] == (target["accuracy"]["pearson"] >= 0.9999999)


def _quantized_convs(onnx_path: Path) -> int:
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantized)


def test_the_budget_ranks_the_decoders_layers(tmp_path: Path) -> None:
    budget = {"min_pixel_agreement": 0.99999, "max_float_layers": 1, "ranking": "simulated"}
    path = _recipe(tmp_path, "segmentation", "dpt", [ALL_BACKENDS[1]], {})
    recipe = json.loads(path.read_text())
    recipe["stages"] = [{"stage": "quantize", "decoder": True, "accuracy_budget": budget}]
    path.write_text(json.dumps(recipe))
    fallback = edgevit.build(path, tmp_path / "b").target("ort-int8")["fallback"]
    assert any(s["layer"].startswith("dense_head.") for s in fallback["sensitivity"])
    assert not any(s["layer"] == "patch_embed.proj" for s in fallback["sensitivity"])


def test_a_classifier_has_no_decoder_to_quantize(tmp_path: Path) -> None:
    from edgevit.errors import RecipeError

    recipe = {
        "name": "cls-decoder",
        "model": {"name": "vit_plus_tiny_patch8_32", "num_classes": 10},
        "data": {
            "calibration": {"source": "digits", "count": 8},
            "evaluation": {"source": "digits", "count": 8},
        },
        "stages": [{"stage": "quantize", "decoder": True}],
        "targets": [ALL_BACKENDS[1]],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    with pytest.raises(RecipeError, match=r"stages\[0\]\.decoder: a classification model has no decoder"):
        edgevit.build(path, tmp_path / "b")
