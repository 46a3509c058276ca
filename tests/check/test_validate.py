"""edgevit validate / compare on a real build: gates, JUnit, Markdown, baselines, tampering, diagnosis."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import edgevit
from edgevit.check.validate import validate
from edgevit.cli import main
from tests.conftest import tiny_recipe, write_recipe

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
DAMAGED = "blocks.0.mlp.fc1"


@pytest.fixture(scope="module")
def build(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny build with a healthy and a deliberately damaged INT8 ONNX (one layer's input scale x64)."""
    root = tmp_path_factory.mktemp("validate")
    targets = [
        {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
        {
            "name": "ort-damaged",
            "backend": "onnxruntime",
            "precision": "int8",
            "options": {"activation_scale_factors": {DAMAGED: 64.0}},
        },
        {"name": "ov-int8", "backend": "openvino", "precision": "int8"},
    ]
    gates = {"max_top1_drop": 100, "min_cosine": 0.99}
    recipe = tiny_recipe(tiny_checkpoint, targets, name="val", calibration=32, evaluation=48, gates=gates)
    report = edgevit.build(write_recipe(root / "recipe.yaml", recipe), root / "b")
    assert not report.passed  # the damaged target fails its cosine gate already in the build
    return root / "b"


def test_damaged_layer_fails_validation_and_is_named(build: Path, tmp_path: Path, capsys) -> None:
    junit, md = tmp_path / "junit.xml", tmp_path / "summary.md"
    assert main(["validate", str(build), "--junit", str(junit), "--markdown", str(md), "--quiet"]) == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [
        ("edgevit.val.ort-damaged", "min_cosine")
    ]
    assert {c.get("classname") for c in suite.iter("testcase")} >= {
        "edgevit.val.ort-int8", "edgevit.val.ort-damaged", "edgevit.val.ov-int8",
    }  # fmt: skip
    summary = md.read_text()
    assert "❌ FAILED" in summary and f"`{DAMAGED}`" in summary.split("Where INT8 hurts `ort-damaged`")[1]
    # The build's report names it too, and `edgevit compare` ranks it first.
    report = json.loads((build / "report.json").read_text())
    damaged = next(t for t in report["targets"] if t["name"] == "ort-damaged")
    assert damaged["layerwise"]["layers"][0]["layer"] == DAMAGED
    assert main(["compare", str(build), "--target", "ort-damaged", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["ort-damaged"]["layers"]
    worst, runner_up = ranked[0], ranked[1]
    assert worst["layer"] == DAMAGED and worst["quantized"]
    assert worst["local_sqnr_db"] < runner_up["local_sqnr_db"] - 10
    healthy = next(t for t in report["targets"] if t["name"] == "ort-int8")["layerwise"]["layers"]
    assert all(x["local_sqnr_db"] > 20 for x in healthy if x["quantized"])


def test_openvino_layers_are_compared_with_their_fake_quantizers(build: Path) -> None:
    report = json.loads((build / "report.json").read_text())
    layers = next(t for t in report["targets"] if t["name"] == "ov-int8")["layerwise"]["layers"]
    quantized = [x for x in layers if x["quantized"]]
    assert len(quantized) >= 4 and all(15 < x["local_sqnr_db"] < 150 for x in quantized)
    assert {x["layer"] for x in quantized} >= {"blocks.0.attn.qkv", "blocks.0.attn.proj", DAMAGED}


def test_rechecked_numbers_match_the_build(build: Path) -> None:
    result = validate(build)
    report = json.loads((build / "report.json").read_text())
    for t, recorded in zip(result.targets, report["targets"], strict=True):
        assert t["where"] == "host" and t["accuracy"]["cosine"] == pytest.approx(
            recorded["accuracy"]["cosine"]
        )
    assert result.files_verified >= 10 and not result.passed
    assert all(t["rechecked"] for t in result.targets) and "3 of 3 artifacts re-checked" in result.markdown()


def test_tampered_or_missing_artifact_is_an_error(build: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "b"
    shutil.copytree(build, copy)
    artifact = copy / "targets" / "ort-int8" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert main(["validate", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "targets/ort-int8/model.onnx was changed after the build" in err[0]
    artifact.unlink()
    assert main(["validate", str(copy)]) == 2
    assert "targets/ort-int8/model.onnx is listed in manifest.json but missing" in capsys.readouterr().err


def test_baseline_regressions(build: Path, tmp_path: Path) -> None:
    baseline = json.loads((build / "report.json").read_text())
    for t in baseline["targets"]:
        if t["name"] == "ort-int8":
            t["accuracy"]["top1"] += 2.0  # the baseline was 2 points better
            t["latency_ms"]["p50"] /= 10  # and 10x faster
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))

    def verdicts(**kw: float) -> dict[tuple[str, str], bool]:
        found = validate(build, baseline=path, **kw).gates
        return {(g.target, g.name): g.passed for g in found if g.name.startswith("baseline")}

    got = verdicts(tolerance=0.5)
    assert got[("ort-int8", "baseline_top1")] is False and got[("ov-int8", "baseline_top1")] is True
    assert ("ort-int8", "baseline_latency_p50_ms") not in got  # latency is compared only when asked
    got = verdicts(tolerance=3.0, latency_tolerance=0.5)
    assert (
        got[("ort-int8", "baseline_top1")] is True and got[("ort-int8", "baseline_latency_p50_ms")] is False
    )
    assert main(["validate", str(build), "--baseline", str(tmp_path / "nope.json")]) == 2


def test_an_artifact_made_elsewhere_is_checked_in_place(build: Path, tmp_path: Path, capsys) -> None:
    """`--artifact TARGET=PATH`: e.g. the damaged target re-quantized outside edgevit."""
    fixed = tmp_path / "fixed.onnx"
    shutil.copyfile(build / "targets" / "ort-int8" / "model.onnx", fixed)
    result = validate(build, replacements={"ort-damaged": fixed})
    t = next(t for t in result.targets if t["name"] == "ort-damaged")
    assert t["artifact"] == str(fixed) and t["note"].startswith(f"replaced by {fixed}")
    assert t["accuracy"]["cosine"] > 0.99 and t["latency_ms"]["runs"] == 5
    assert result.passed
    assert main(["validate", str(build), "--artifact", f"ort-damaged={tmp_path / 'x.xml'}"]) == 2
    assert "not a .onnx file" in capsys.readouterr().err
    assert main(["validate", str(build), "--artifact", f"nope={fixed}"]) == 2
    assert "the build has no built target nope" in capsys.readouterr().err
