"""The profiling agent scores a dense artifact on a device: scoring.py shipped beside agent.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.check.bundle import write_bundle

REPO = Path(__file__).resolve().parents[2]


def _dense_onnx(out: Path) -> Path:
    from edgevit.models.load import create
    from edgevit.stages.export import export_onnx

    torch.manual_seed(0)
    model = create(
        "vit_plus_tiny_patch4_32", num_classes=6, depth=1, task="segmentation", dense_head="linear"
    )
    return export_onnx(model.eval(), (3, 32, 32), out / "seg.onnx")


def test_the_agent_alone_on_a_device_scores_a_dense_artifact(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _dense_onnx(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3, 32, 32)).astype(np.float32)
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
        0
    ]
    maps = reference.argmax(1)
    maps[:, :4] = 255  # unlabelled rows
    bundle = tmp_path / "bundle.npz"
    write_bundle(
        bundle,
        20,
        (3, 32, 32),
        ((x[i : i + 8], reference[i : i + 8], maps[i : i + 8]) for i in range(0, 20, 8)),
    )
    device = tmp_path / "device"  # what a transport copies: the agent, scoring.py, the artifact, the bundle
    device.mkdir()
    for f in (REPO / "edgevit" / "agent.py", REPO / "edgevit" / "scoring.py", model, bundle):
        shutil.copy(f, device / f.name)
    # edgevit itself is not importable there: the agent must find scoring.py beside it
    code = (
        "import runpy, sys; sys.modules['edgevit'] = None; sys.path.insert(0, '.'); "
        "sys.argv = ['agent.py', 'seg.onnx', '--bundle', 'bundle.npz', '--runs', '3', '--warmup', '1']; "
        "runpy.run_path('agent.py', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=device, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    acc = doc["accuracy"]
    assert acc["samples"] == 20 and acc["pixel_agreement"] == 1.0 and acc["miou"] == 100.0
    assert doc["latency_ms"]["runs"] == 3


@pytest.mark.slow
def test_a_phone_scores_a_dense_tflite_over_adb(fake_phone, tmp_path: Path) -> None:
    """The adb path (the stand-in phone) scores LiteRT's dense outputs as the local agent does."""
    pytest.importorskip("litert_torch")
    import edgevit
    from edgevit.profiling import profile
    from tests.test_dense_build import _recipe

    target = {"name": "tfl-int8", "backend": "tflite", "precision": "int8"}
    path = _recipe(tmp_path, "segmentation", "dpt", [target], {})
    recipe = json.loads(path.read_text())
    recipe["check"]["layerwise_samples"] = 0
    path.write_text(json.dumps(recipe))
    report = edgevit.build(path, tmp_path / "b")
    artifact, bundle = (
        report.directory / report.target("tfl-int8")["artifact"],
        tmp_path / "b" / "eval" / "bundle.npz",
    )
    local = profile(artifact, "local", runs=3, warmup=1, bundle=bundle).results[0]["accuracy"]
    phone = profile(artifact, "adb://emulator-5554", runs=3, warmup=1, bundle=bundle).results[0]["accuracy"]
    assert phone["samples"] == local["samples"] == 12
    for key in ("miou", "pixel_agreement", "miou_vs_float", "sqnr_db"):
        assert phone[key] == pytest.approx(local[key], abs=1e-4), key
    assert phone["pixel_agreement"] == pytest.approx(
        report.target("tfl-int8")["accuracy"]["pixel_agreement"], abs=1e-4
    )
