"""`edgevit build` profiles a target on its SSH device through the agent (a real sshd on 127.0.0.1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

import edgevit
from edgevit import devices

pytest.importorskip("onnxruntime")


@pytest.fixture
def lab_box(sshd, tmp_path, monkeypatch) -> str:
    profiles = tmp_path / "targets"
    profiles.mkdir()
    (profiles / "lab-box.yaml").write_text(
        yaml.safe_dump(
            {"transport": "ssh", "address": sshd.url(sys.executable), "runtimes": ["onnxruntime"], "threads": 1}
        )
    )
    monkeypatch.setattr(devices, "targets_dir", lambda: profiles)
    devices.resolve_device.cache_clear()
    yield "lab-box"
    devices.resolve_device.cache_clear()


def test_build_measures_latency_on_the_device(lab_box, sshd, tiny_checkpoint: Path, tmp_path: Path) -> None:
    recipe = {
        "name": "on-device",
        "model": {"checkpoint": str(tiny_checkpoint)},
        "data": {
            "calibration": {"source": "digits", "split": "train", "count": 16},
            "evaluation": {"source": "digits", "split": "test", "count": 24},
        },
        "stages": [{"stage": "quantize"}],
        "targets": [{"name": "ort-int8", "backend": "onnxruntime", "precision": "int8", "device": lab_box}],
        "check": {"runs": 20, "warmup": 2},
        "gates": {"max_top1_drop": 100, "max_latency_p50_ms": 10000},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    report = edgevit.build(path, tmp_path / "b")
    t = report.target("ort-int8")
    assert t["where"] == "device:lab-box" and report.passed
    assert t["reason"].startswith("latency measured on device lab-box by the profiling agent")
    assert t["latency_ms"]["runs"] == 20 and t["latency_ms"]["p50"] > 0
    assert t["device_profile"]["accuracy"]["agreement"] == t["accuracy"]["agreement"]

    sshd.kill_all()  # the device goes away: accuracy still checked here, latency not measured, gate fails
    again = edgevit.build(path, tmp_path / "b")
    t = again.target("ort-int8")
    assert t["status"] == "ok" and t["where"] == "host" and t["latency_ms"] is None
    assert "could not be profiled" in t["reason"] and "unreachable" in t["reason"]
    assert not again.passed
