"""The equalize step through a build: chosen with the simulator, folded, lowered, reported."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.models.load import load, save
from edgevit.pipeline import build
from edgevit.quant.equalize import equalize, rotation_key
from edgevit.quant.outliers import add_outliers
from edgevit.recipe.loader import validate_recipe
from edgevit.targets import TARGETS
from tests.conftest import run_cli, tiny_recipe

pytest.importorskip("onnxruntime")


def test_equalize_keeps_the_function(tiny_checkpoint: Path) -> None:
    model = load(checkpoint=tiny_checkpoint).model.eval()
    add_outliers(model, seed=2)
    calibration = np.random.default_rng(0).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    folded = copy.deepcopy(model)
    pairs = equalize(folded, calibration, alpha=0.75)
    assert {p.producer for p in pairs} >= {"blocks.0.norm1", "blocks.0.norm2", "blocks.0.attn.qkv[v]", "norm"}
    x = torch.from_numpy(calibration)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert max(p.scale_max for p in pairs) > 1 > min(p.scale_min for p in pairs)


def test_build_equalizes_every_int8_grid_it_models(tiny_checkpoint: Path, tmp_path: Path) -> None:
    loaded = load(checkpoint=tiny_checkpoint)
    add_outliers(loaded.model, channels=3, seed=0)
    outliers = tmp_path / "outliers"
    save(loaded.model, loaded.config, outliers)
    targets = [
        {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
        {"name": "trt-int8", "backend": "tensorrt", "precision": "int8"},
        {"name": "ov-int8", "backend": "openvino", "precision": "int8"},
        {"name": "tfl-int8", "backend": "tflite", "precision": "int8"},
        {"name": "coreml-w8a8", "backend": "coreml", "precision": "int8", "options": {"mode": "w8a8"}},
        {"name": "ort-fp32", "backend": "onnxruntime", "precision": "fp32"},
    ]
    targets = [t for t in targets if TARGETS.get(t["backend"]).availability().available]
    doc = tiny_recipe(
        outliers, targets, calibration=32, evaluation=48, quantize={"equalize": "off", "rotate": "off"}
    )
    plain = build(validate_recipe(doc, "test", tmp_path), tmp_path / "plain").data
    doc["stages"][0].pop("equalize")  # the defaults: auto (scales, and rotation as a candidate)
    doc["stages"][0].pop("rotate")
    report = build(validate_recipe(doc, "test", tmp_path), tmp_path / "equalized")
    # OpenVINO's own SmoothQuant already holds on this model: equalization need not add to it.
    collapsing = [t["name"] for t in targets if t["precision"] == "int8" and t["backend"] != "openvino"]
    assert {"ort-int8", "trt-int8"} <= set(collapsing)
    for name in collapsing:
        entry, before = report.target(name), next(t for t in plain["targets"] if t["name"] == name)
        eq = entry["equalization"]  # scales or the rotation, whichever the simulator measured best
        assert eq["applied"] and (eq["alpha"] in (0.5, 0.75, 0.9) or eq["rotation"]["residual"]), eq
        chosen = rotation_key(eq["rotation"]["seed"]) if eq["alpha"] is None else f"{eq['alpha']:g}"
        assert eq["simulated_sqnr_db"][chosen] > eq["simulated_sqnr_db"]["off"]
        # the artifact built from the equalized model is closer to float than the plain one
        assert entry["accuracy"]["sqnr_db"] > before["accuracy"]["sqnr_db"] + 3, (name, entry, before)
    if any(t["name"] == "ov-int8" for t in targets):
        ov = report.target("ov-int8")
        assert ov["equalization"]["scheme"]["smooth_alpha"] == 0.5  # NNCF's SmoothQuant simulated too
    for t in targets:  # never worse than off, whichever grid this host's CPU gives (issue 32)
        if t["precision"] != "int8":
            continue
        entry, before = report.target(t["name"]), next(p for p in plain["targets"] if p["name"] == t["name"])
        assert entry["accuracy"]["sqnr_db"] >= before["accuracy"]["sqnr_db"] - 0.3, (t["name"], entry, before)
        eq = entry["equalization"]
        if eq["alpha"] is not None or eq.get("rotation") or "reason" in eq:
            # the simulator's choice was built and measured on the calibration images before it was kept
            measured, kept = eq["measured_sqnr_db"], eq["alpha"] is not None or eq["rotation"] is not None
            chosen = next(k for k in measured if k != "off")
            assert kept is (measured[chosen] >= measured["off"] + 1), (t["name"], eq)
    assert "equalization" not in report.target("ort-fp32")
    assert "Equalization" in (tmp_path / "equalized" / "report.md").read_text()
    grid = report.target("ort-int8")["equalization"]["scheme"]  # 8-bit INT8 or UINT8 weights, by the CPU
    tag = f"onnxruntime-w{grid['weight_bits']}{'-u8' if grid['weight_unsigned'] else ''}"
    assert (tmp_path / "equalized" / "equalize" / tag / "model.onnx").is_file()
    assert (tmp_path / "equalized" / "equalize" / "tensorrt-w8" / "model.onnx").is_file()
    check = run_cli("validate", str(tmp_path / "equalized"), "--quiet")
    assert check.returncode == 0, check.stderr


def test_a_strength_the_artifact_does_not_confirm_is_not_applied(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The simulator chooses; the built artifact (``measure``) must agree by 1 dB, else the model
    is exported as it is, and the record says why."""
    from edgevit.errors import LoweringError
    from edgevit.quant.scheme import onnxruntime_scheme
    from edgevit.recipe.schema import QuantizeStage
    from edgevit.stages.equalize import run_equalize

    loaded = load(checkpoint=tiny_checkpoint)
    add_outliers(loaded.model, channels=3, seed=0)  # equalization wins ~20 dB in the simulator
    calibration = np.random.default_rng(0).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    scheme, stage = onnxruntime_scheme(seven_bit=False), QuantizeStage(stage="quantize", rotate="off")
    scores = {None: 20.0}

    def measure(export: Path | None) -> float:
        return scores.get(export, scores.get("equalized", 0.0))

    def run(name: str) -> dict:
        out = tmp_path / name
        out.mkdir()
        return run_equalize(loaded.model, loaded.config, scheme, stage, calibration, out, measure)

    scores["equalized"] = 20.5  # less than 1 dB better on the artifact: not applied
    record = run("unconfirmed")
    assert record["alpha"] is None and record["simulated_alpha"] in (0.5, 0.75, 0.9)
    assert "did not beat no equalization" in record["reason"] and record["pairs"] == []
    assert record["measured_sqnr_db"] == {"off": 20.0, f"{record['simulated_alpha']:g}": 20.5}
    plain = load(checkpoint=tmp_path / "unconfirmed").model  # the model as it was
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key
    scores["equalized"] = 25.0
    record = run("confirmed")
    assert record["alpha"] in (0.5, 0.75, 0.9) and record["pairs"] and "reason" not in record

    def unbuildable(export: Path | None) -> float:
        raise LoweringError("no such backend here")

    out = tmp_path / "unmeasured"
    out.mkdir()
    record = run_equalize(loaded.model, loaded.config, scheme, stage, calibration, out, unbuildable)
    assert record["alpha"] is not None and "not confirmed" in record["note"]  # the simulator's choice


def test_rotation_is_a_candidate_and_on_forces_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``rotate: auto`` simulates the rotated model beside the strengths; ``on`` folds it whatever
    the measurements say, and the checkpoint it writes loads again with the same function."""
    from edgevit.quant.scheme import tensorrt_scheme
    from edgevit.recipe.schema import QuantizeStage
    from edgevit.stages.equalize import run_equalize

    loaded = load(checkpoint=tiny_checkpoint)
    calibration = np.random.default_rng(0).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    scheme = tensorrt_scheme()

    def run(name: str, **settings: str) -> dict:
        out = tmp_path / name
        out.mkdir()
        stage = QuantizeStage(stage="quantize", **settings)
        return run_equalize(loaded.model, loaded.config, scheme, stage, calibration, out, lambda _: 20.0)

    auto = run("auto")
    seeds = {"rotate", "rotate@1", "rotate@2"}  # rotation_seeds: 3 random rotations by default
    assert {"off", "0.5"} | seeds <= set(auto["simulated_sqnr_db"])
    forced = run("on", rotate="on", equalize="off")
    assert forced["rotation"]["values"] == 1 and forced["rotation"]["residual"], forced
    scores = forced["simulated_sqnr_db"]
    assert forced["alpha"] is None and set(scores) == {"off"} | seeds
    # the rotation folded is the seed the simulator scored best ("off": that rotation, no scales)
    best = max(seeds, key=lambda k: scores[k])
    assert rotation_key(forced["rotation"]["seed"]) == best and scores["off"] == scores[best]
    rotated = load(checkpoint=tmp_path / "on")
    assert rotated.config.rotation is not None and rotated.config.rotation.fc2_hadamard
    x = torch.from_numpy(calibration[:4])
    with torch.no_grad():
        ref = loaded.model.eval()(x)
        assert torch.allclose(rotated.model(x), ref, atol=1e-4 * float(ref.abs().max()))
    assert run("off", rotate="off")["rotation"] is None
