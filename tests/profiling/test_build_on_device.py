"""`edgevit build` profiles a target on its SSH device through the agent (a real sshd on 127.0.0.1)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import edgevit
from tests.conftest import tiny_recipe, write_recipe

pytest.importorskip("onnxruntime")


@pytest.fixture
def lab_box(sshd, device_profiles) -> str:
    profile = {
        "transport": "ssh",
        "address": sshd.url(sys.executable),
        "runtimes": ["onnxruntime"],
        "threads": 1,
    }
    return device_profiles("lab-box", profile)


def test_build_measures_latency_on_the_device(lab_box, sshd, tiny_checkpoint: Path, tmp_path: Path) -> None:
    target = {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8", "device": lab_box}
    gates = {"max_top1_drop": 100, "max_latency_p50_ms": 10000}
    recipe = tiny_recipe(
        tiny_checkpoint, [target], name="on-device", check={"runs": 20, "warmup": 2}, gates=gates
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
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


@pytest.fixture
def stand_in_jetson(sshd, device_profiles, tmp_path) -> str:
    """An SSH 'Jetson' whose Python sees the tensorrt/cuda-python stand-ins (see standin_trt/README.md)."""
    standin = Path(__file__).resolve().parent / "standin_trt"
    python = tmp_path / "jetson-python"
    python.write_text(
        f"#!/bin/sh\nexport PYTHONPATH={standin} XDG_CACHE_HOME={tmp_path / 'device-cache'}\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    profile = {
        "transport": "ssh",
        "address": sshd.url(str(python)),
        "runtimes": ["tensorrt"],
        "threads": 1,
        "tensorrt": {"version": "10.3", "workspace_mib": 512},
    }
    return device_profiles("lab-jetson", profile)


def test_tensorrt_target_is_built_and_measured_on_the_device(
    stand_in_jetson, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The whole device path of a TensorRT target: ONNX + plan sent over ssh, the engine built there
    (stand-in TensorRT), its accuracy and latency reported as the device's, the host's ONNX Runtime
    simulation kept beside them; a second build reuses the device's cached engine."""
    target = {"name": "trt-int8", "backend": "tensorrt", "precision": "int8", "device": stand_in_jetson}
    gates = {"max_top1_drop": 100, "max_latency_p50_ms": 10000}
    recipe = tiny_recipe(
        tiny_checkpoint, [target], name="jetson", check={"runs": 10, "warmup": 1}, gates=gates
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    report = edgevit.build(path, tmp_path / "b")
    t = report.target("trt-int8")
    assert t["status"] == "ok" and t["where"] == "device:lab-jetson" and report.passed, t["reason"]
    assert t["reason"].startswith("latency and accuracy measured on device lab-jetson")
    assert t["host_simulation"]["where"] == "simulated:onnxruntime-fakequant"
    dev = t["device_profile"]
    assert dev["runtime"] == "tensorrt" and dev["versions"]["tensorrt"] == "10.3.0"
    assert dev["session"]["engine"] == "built" and dev["session"]["layer_precisions"]["counts"]["int8"] > 0
    assert {k: t["accuracy"][k] for k in dev["accuracy"]} == dev["accuracy"] and t["latency_ms"]["runs"] == 10
    # The host simulation and the (stand-in) engine ran the same ONNX: the same numbers.
    assert t["accuracy"]["agreement"] == t["host_simulation"]["accuracy"]["agreement"]
    assert (
        json.loads((tmp_path / "b" / t["artifact"]).with_name("build_engine.json").read_text())[
            "workspace_mib"
        ]
        == 512
    )  # the device profile's tensorrt settings reached the plan

    again = edgevit.build(path, tmp_path / "b")
    assert again.target("trt-int8")["device_profile"]["session"]["engine"] == "cached"
