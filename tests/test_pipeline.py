"""In-process builds with a stand-in builtin model (1 block, 2 epochs) in a fresh cache."""

from pathlib import Path
from typing import Any

import pytest

import edgevit
from edgevit import builtin
from edgevit.train import TrainConfig


@pytest.fixture
def fresh_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEVIT_CACHE", str(cache))
    quick = TrainConfig(model="vit_plus_tiny_patch8_32", model_kwargs={"depth": 1}, epochs=2)
    monkeypatch.setitem(builtin.BUILTINS, "digits", quick)
    return cache


def test_quiet_build_trains_the_builtin_once_silently(fresh_builtin: Path, tmp_path: Path, capfd) -> None:
    report = edgevit.build(
        "digits-ort-int8", tmp_path / "b", overrides=["check.runs=5", "gates.max_top1_drop=100"]
    )
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert report.passed and {t["status"] for t in report.data["targets"]} == {"ok"}
    assert len(list((fresh_builtin / "models").glob("digits-*/model.safetensors"))) == 1
    lines: list[str] = []
    edgevit.build("digits-ort-int8", tmp_path / "b", overrides=["check.runs=5"], log=lines.append)
    assert not any("training builtin" in line for line in lines)  # cached now
    assert any(line.startswith("ort-int8: top-1") for line in lines)


def test_relative_build_dir(fresh_builtin: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    report = edgevit.build("digits-ort-int8", overrides=["check.runs=5", "gates.max_top1_drop=100"])
    assert report.directory == tmp_path / "build" / "digits-ort-int8"
    assert report.target("ort-int8")["artifact"] == "targets/ort-int8/model.onnx"
    assert (tmp_path / "build" / "digits-ort-int8" / "report.json").is_file()


def test_missing_backend_is_reported_as_skipped(fresh_builtin: Path, tmp_path: Path, monkeypatch) -> None:
    from edgevit.targets import TARGETS, Availability

    ov = TARGETS.get("openvino")
    monkeypatch.setattr(
        type(ov), "availability", lambda self: Availability(False, "openvino is not importable")
    )
    report = edgevit.build("x86-openvino-int8", tmp_path / "b", overrides=["check.runs=5"])
    assert [t["status"] for t in report.data["targets"]] == ["skipped", "skipped"]
    assert report.passed  # skipped targets pass unless gates.fail_on_skipped
    strict = edgevit.build("x86-openvino-int8", tmp_path / "b", overrides=["gates.fail_on_skipped=true"])
    assert not strict.passed
    assert "openvino is not importable" in (tmp_path / "b" / "report.md").read_text()


def _folder_project(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A recipe next to its checkpoint and a 30-image folder, all named relative to it."""
    import shutil

    import yaml

    from tests.conftest import write_image_folder

    project = tmp_path / "project"
    shutil.copytree(tiny_checkpoint, project / "ckpt")
    write_image_folder(project / "images", {str(i): 3 for i in range(10)}, size=20)
    recipe = {
        "name": "mine",
        "model": {"checkpoint": "ckpt"},
        "data": {
            "calibration": {"source": "images", "split": "train"},
            "evaluation": {"source": "images", "split": "all"},
        },
        "stages": [{"stage": "quantize", "calibration_batch": 4}],
        "targets": [
            {"name": "fp32", "backend": "onnxruntime"},
            {"name": "int8", "backend": "onnxruntime", "precision": "int8"},
        ],
        "check": {"runs": 5, "warmup": 1, "eval_batch": 8},
        "gates": {"max_top1_drop": None, "min_cosine": 0.9},
    }
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return project / "recipe.yaml"


def test_user_checkpoint_and_image_folder_relative_to_the_recipe(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    report = edgevit.build(_folder_project(tiny_checkpoint, tmp_path), tmp_path / "out")
    assert report.data["reference"]["samples"] == 30
    assert report.data["reference"]["evaluation"].endswith("images/all")
    assert report.passed, report.data["gates"]
    assert report.target("int8")["accuracy"]["cosine"] < 1.0


def test_a_streamed_evaluation_set_reports_what_the_in_memory_one_does(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    """Past the cache limit the evaluation images stream into the bundle batch by batch and are
    read back a batch at a time: the same bundle and the same report numbers."""
    import numpy as np

    recipe = _folder_project(tiny_checkpoint, tmp_path)
    held = edgevit.build(recipe, tmp_path / "held")
    monkeypatch.setenv("EDGEVIT_DATA_CACHE_MB", "0")
    streamed = edgevit.build(recipe, tmp_path / "streamed")
    assert held.data["reference"]["top1"] == streamed.data["reference"]["top1"]
    for a, b in zip(held.data["targets"], streamed.data["targets"], strict=True):
        assert a["accuracy"] == b["accuracy"], a["name"]
    bundles = [tmp_path / build / "eval" / "bundle.npz" for build in ("held", "streamed")]
    with np.load(bundles[0]) as x, np.load(bundles[1]) as y:
        assert sorted(x.files) == sorted(y.files) == ["inputs", "labels", "reference_logits"]
        for name in x.files:
            assert np.array_equal(x[name], y[name]), name


QUICK_COMPRESSION = [
    "stages.0.remove_blocks=0",
    "stages.1.epochs=1",
    "check.runs=5",
    "gates.max_top1_drop=100",
    "gates.max_compression_top1_drop=100",
]


def test_prune_distill_quantize_build(fresh_builtin: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    report = edgevit.build(
        "digits-pruned-int8", tmp_path / "b", overrides=QUICK_COMPRESSION, log=lines.append
    )
    doc = report.data
    assert [s["stage"] for s in doc["stages"]] == ["prune", "distill"]
    ref, pruned, distilled = doc["reference"], doc["stages"][0], doc["stages"][1]
    assert pruned["macs"] <= 0.5 * ref["macs"] and pruned["params"] < ref["params"]
    assert distilled["macs"] == pruned["macs"]  # distillation trains, it does not resize
    assert pruned["checkpoint_bytes"] < ref["checkpoint_bytes"]
    assert pruned["details"]["after"]["macs"] == pruned["macs"]
    assert distilled["top1_drop"] == pytest.approx(ref["top1"] - distilled["top1"], abs=1e-3)
    assert doc["lowered"]["step"] == "stages/1-distill"
    assert {t["status"] for t in doc["targets"]} == {"ok"}
    assert "reference_top1_drop" in report.target("ort-int8")["accuracy"]
    gate = next(g for g in doc["gates"] if g["name"] == "max_compression_top1_drop")
    assert (
        gate["value"] == pytest.approx(distilled["top1_drop"]) and gate["target"] == "stage:stages/1-distill"
    )
    md = (tmp_path / "b" / "report.md").read_text()
    assert "| prune |" in md and "| distill |" in md
    again = edgevit.build("digits-pruned-int8", tmp_path / "b", overrides=QUICK_COMPRESSION)
    assert all(s["reused"] for s in again.data["stages"])


def test_distill_into_a_named_student(fresh_builtin: Path, tmp_path: Path) -> None:
    import yaml

    recipe = {
        "name": "kd-only",
        "model": {"checkpoint": "builtin:digits"},
        "data": {"calibration": "digits-train-256", "evaluation": "digits-test", "train": "digits-train"},
        "stages": [{"stage": "distill", "student": "vit_plus_tiny_patch8_32", "epochs": 1}],
        "targets": [{"name": "ort-fp32", "backend": "onnxruntime"}],
        "check": {"runs": 5},
        "gates": {"max_compression_top1_drop": None},
    }
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = edgevit.build(path, tmp_path / "b")
    (stage,) = report.data["stages"]
    assert stage["details"]["student"] == "vit_plus_tiny_patch8_32"
    assert stage["params"] > report.data["reference"]["params"]  # the 4-block student vs the 1-block stand-in
    assert report.target("ort-fp32")["accuracy"]["top1_drop"] == 0.0


def test_coreml_build_is_simulated_and_an_unevaluable_op_skips_the_check(
    fresh_builtin: Path, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("coremltools")
    import yaml

    from edgevit.paths import recipes_dir
    from edgevit.targets import coreml_mil

    recipe = yaml.safe_load((recipes_dir() / "ios-coreml-int8.yaml").read_text())
    recipe["data"] = {
        "calibration": {"source": "digits", "split": "train", "count": 16},
        "evaluation": {"source": "digits", "split": "test", "count": 24},
    }
    recipe["targets"] = [t for t in recipe["targets"] if t["name"] in ("coreml-fp16", "coreml-w8a8")]
    path = tmp_path / "ios.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = edgevit.build(path, tmp_path / "b")
    for name in ("coreml-fp16", "coreml-w8a8"):
        t = report.target(name)
        assert t["status"] == "ok" and t["where"] == "simulated:mil-reference"
        assert (
            t["latency_ms"] is None and "latency not measured: no coreml runtime on this host" in t["reason"]
        )
        assert t["artifact"] == f"targets/{name}/model.mlpackage" and len(t["sha256"]) == 64
        assert t["device"] == "iphone-15" and t["coreml"]["deployment_target"] == "iOS17"
    assert report.target("coreml-w8a8")["accuracy"]["cosine"] > 0.99
    md = (tmp_path / "b" / "report.md").read_text()
    assert "simulated:mil-reference" in md and "Core ML packages:" in md
    assert not any(g["name"].startswith("latency") for g in report.data["gates"])

    # Without its conv evaluator the program cannot be checked: kept and reported, not failed.
    monkeypatch.delitem(coreml_mil._OWN, "conv")
    again = edgevit.build(path, tmp_path / "b")
    t = again.target("coreml-fp16")
    assert t["status"] == "skipped" and "no reference evaluator for MIL op(s) conv" in t["reason"]
    assert t["reused"] and t["sha256"] == report.target("coreml-fp16")["sha256"]


def test_tensorrt_build_is_simulated_and_passes_on_accuracy_gates(
    fresh_builtin: Path, tmp_path: Path
) -> None:
    import yaml

    from edgevit.paths import recipes_dir

    recipe = yaml.safe_load((recipes_dir() / "jetson-orin-int8.yaml").read_text())
    recipe["data"] = {
        "calibration": {"source": "digits", "split": "train", "count": 16},
        "evaluation": {"source": "digits", "split": "test", "count": 24},
    }
    recipe["gates"] = {"max_top1_drop": 100}
    for t in recipe["targets"]:
        t.pop("gates")
    path = tmp_path / "jetson.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = edgevit.build(path, tmp_path / "b")
    assert report.passed
    for name in ("trt-fp16", "trt-int8"):
        t = report.target(name)
        assert t["where"] == "simulated:onnxruntime-fakequant" and t["latency_ms"] is None
        assert "latency not measured: no tensorrt runtime on this host" in t["reason"]
        assert "device jetson-orin-nano could not be profiled" in t["reason"] and "unreachable" in t["reason"]
        assert (tmp_path / "b" / "targets" / name / "build_engine.json").is_file()
    assert report.target("trt-int8")["tensorrt"]["qdq"]["symmetric"]


def _qat_recipe(path: Path, quantize: dict[str, Any], targets: list[dict[str, Any]]) -> Path:
    """A digits recipe with a one-epoch qat stage (on the quick builtin of ``fresh_builtin``)."""
    import yaml

    recipe = {
        "name": path.stem,
        "model": {"checkpoint": "builtin:digits"},
        "data": {
            "calibration": {"source": "digits", "split": "train", "count": 32},
            "evaluation": {"source": "digits", "split": "test", "count": 64},
            "train": {"source": "digits", "split": "train", "count": 64},
        },
        "stages": [
            {"stage": "qat", "epochs": 1, "batch_size": 32, "warmup_epochs": 0},
            {"stage": "quantize", "matmul_scope": "all", **quantize},
        ],
        "targets": targets,
        "check": {"runs": 5, "layerwise_samples": 0},
        "gates": {"max_top1_drop": None},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_qat_stage_trains_once_per_int8_grid(fresh_builtin: Path, tmp_path: Path) -> None:
    targets = [
        {"name": "ort-a", "backend": "onnxruntime", "precision": "int8"},
        {"name": "ort-b", "backend": "onnxruntime", "precision": "int8", "threads": 1},
        {"name": "trt", "backend": "tensorrt", "precision": "int8"},
    ]
    path = _qat_recipe(tmp_path / "qad.yaml", {"patch_embed": True}, targets)
    lines: list[str] = []
    doc = edgevit.build(path, tmp_path / "b", log=lines.append).data
    a, b, trt = doc["targets"]
    assert {t["status"] for t in doc["targets"]} == {"ok"}
    # targets with the same grid share one run; another grid gets its own
    assert a["qat"]["step"] == b["qat"]["step"] != trt["qat"]["step"]
    assert b["qat"]["reused"] and not a["qat"]["reused"]
    sim = a["qat"]["simulated_sqnr_db"]
    assert {"before", "after", "where"} <= set(sim) and sim["where"].startswith("simulated:")
    assert a["qat"]["images_per_second"] > 0 and a["qat"]["ranges"]["per_layer"]
    assert "vs_qat_float" in a["accuracy"] and "float_top1" in a["qat"]
    assert any(line.startswith("ort-a: qat simulated INT8 SQNR") for line in lines)
    again = edgevit.build(path, tmp_path / "b").data
    assert all(t["qat"]["reused"] for t in again["targets"])


def test_accuracy_budget_recovers_with_qat_only_where_needed(fresh_builtin: Path, tmp_path: Path) -> None:
    def recipe(budget: dict[str, object]) -> Path:
        ort = [{"name": "ort", "backend": "onnxruntime", "precision": "int8"}]
        return _qat_recipe(tmp_path / "recover.yaml", {"accuracy_budget": budget}, ort)

    # Post-training INT8 meets the budget: no qat run, the artifact is the post-training one.
    lines: list[str] = []
    doc = edgevit.build(recipe({"min_sqnr_db": 1, "recover": "qat"}), tmp_path / "b", log=lines.append).data
    (t,) = doc["targets"]
    assert t["fallback"]["needed"] == "none" and t["fallback"]["met"] and "qat" not in t
    assert t["accuracy"]["sqnr_db"] == pytest.approx(t["fallback"]["post_training"]["sqnr_db"], abs=1e-6)
    assert not any("qat against" in line for line in lines)

    # An unreachable budget: qat runs (the recipe's settings), every layer stays INT8.
    path = recipe({"min_sqnr_db": 500, "recover": "qat"})
    doc = edgevit.build(path, tmp_path / "b").data
    (t,) = doc["targets"]
    f = t["fallback"]
    assert f["needed"] == "qat" and not f["met"] and f["float_layers"] == [] and f["tried"] == []
    assert t["qat"]["applied"] and t["qat"]["epochs"] == 1 and "vs_qat_float" in t["accuracy"]
    assert "recover: qat; post-training INT8 had" in (tmp_path / "b" / "report.md").read_text()
    again = edgevit.build(path, tmp_path / "b").data  # cached: neither step flips back and forth
    assert again["targets"][0]["qat"]["reused"] and again["targets"][0]["reused"]

    # qat_then_float: the float search then runs on the trained model.
    doc = edgevit.build(
        recipe({"min_sqnr_db": 500, "recover": "qat_then_float", "max_float_layers": 1}), tmp_path / "b"
    ).data
    f = doc["targets"][0]["fallback"]
    assert f["tried"] and f["needed"] == ("qat+float" if f["float_layers"] else "qat")
    assert doc["targets"][0]["qat"]["reused"]  # the same qat run as above
