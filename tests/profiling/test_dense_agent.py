"""The profiling agent scores a dense artifact on a device: scoring.py shipped beside agent.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
