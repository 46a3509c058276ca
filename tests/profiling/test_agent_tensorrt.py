"""The agent's TensorRT session, driven by stand-ins for `tensorrt` and cuda-python.

This host has no NVIDIA GPU and no TensorRT. The stand-ins in ``standin_trt/`` play the parts of
TensorRT 10's and cuda-python's APIs the agent calls, and "run" the engine with ONNX Runtime (see
its README): these tests check what edgevit asks of TensorRT — the build plan applied, the engine
cache, device buffers, batching, errors, the JSON document — never TensorRT's own numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevit import agent
from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("onnxruntime")
STANDIN = Path(__file__).resolve().parent / "standin_trt"
_MODULES = ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime")


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch):
    """Put the stand-ins first on sys.path (and PYTHONPATH, for agent subprocesses)."""
    for name in _MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]))
    import tensorrt  # type: ignore[import-not-found]
    from cuda.bindings import runtime  # type: ignore[import-not-found]

    yield tensorrt, runtime
    for name in _MODULES:
        sys.modules.pop(name, None)


def lower(ckpt: Path, onnx_path: Path, out: Path, precision: str) -> Path:
    cfg = load(checkpoint=ckpt).config
    calib = np.random.default_rng(1).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    stage = QuantizeStage(stage="quantize", calibration_batch=8) if precision == "int8" else None
    out.mkdir(parents=True, exist_ok=True)
    request = LowerRequest(onnx_path, precision, cfg, {}, stage, calib, checkpoint=ckpt)
    return TARGETS.get("tensorrt").lower(request, out)


@pytest.fixture(scope="module")
def trt_int8(tiny_checkpoint: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lower(tiny_checkpoint, tiny_onnx, tmp_path_factory.mktemp("trt-int8"), "int8")


def test_engine_is_built_from_the_plan_cached_and_run(
    standin, trt_int8: Path, bundle: Path, tmp_path: Path
) -> None:
    trt, cuda = standin
    cache = tmp_path / "engines"
    doc = agent.profile(trt_int8, runs=5, warmup=1, bundle=bundle, runtime="tensorrt", engine_cache=cache)
    assert doc["runtime"] == "tensorrt" and doc["versions"]["tensorrt"] == "10.3.0"
    session = doc["session"]
    assert session["engine"] == "built" and session["gpu"] == "Stand-in GPU (ONNX Runtime on CPU)"
    assert session["version_matches_plan"] and session["plan_tensorrt_version"] == "10.3"
    # The plan reached the builder: precision flags, obey-constraints, workspace, static profile, verbosity.
    header = trt.BUILDS[-1]
    assert header["flags"] == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert header["pools"] == {"WORKSPACE": 1024 << 20} and header["verbosity"] == "DETAILED"
    assert header["profile"] == {"input": [[1, 3, 32, 32]] * 3} and header["timing_cache_in"] == ""
    pinned = {lay["name"] for lay in header["layers"] if lay["fp32"]}
    norms = {lay["name"] for lay in header["layers"] if lay["op"] in ("LayerNormalization", "Softmax")}
    assert pinned == norms and pinned == set(session["pinned_fp32"]) and len(pinned) >= 3
    counts = session["layer_precisions"]["counts"]
    assert counts["int8"] >= 4 and counts["fp32"] == len(pinned)  # the Linear layers run INT8
    # The engine's numbers are the same ONNX's (the stand-in runs it with ONNX Runtime).
    with np.load(bundle) as npz:
        expected = agent.fidelity(
            agent.OrtSession(trt_int8, 1)(npz["inputs"]), npz["labels"], npz["reference_logits"]
        )
    assert doc["accuracy"]["agreement"] == round(expected["agreement"], 6)
    assert doc["accuracy"]["cosine"] == pytest.approx(expected["cosine"], abs=1e-6)
    # Timing and 12 images at batch 16 ran one engine-batch (1) at a time on the same two device
    # buffers, freed with the session.
    assert [f"malloc {3 * 32 * 32 * 4}", f"malloc {10 * 4}", "free", "free"] == cuda.CALLS

    builds = len(trt.BUILDS)
    again = agent.profile(trt_int8, runs=3, warmup=0, runtime="tensorrt", engine_cache=cache)
    assert again["session"]["engine"] == "cached" and len(trt.BUILDS) == builds
    assert again["input_shape"] == [3, 32, 32]  # from the engine's profile when no bundle is given

    plan = json.loads((trt_int8.parent / agent.PLAN_NAME).read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.onnx").write_bytes(trt_int8.read_bytes())
    (other / agent.PLAN_NAME).write_text(json.dumps({**plan, "workspace_mib": 256}))
    rebuilt = agent.profile(other / "model.onnx", runs=2, warmup=0, runtime="tensorrt", engine_cache=cache)
    assert (
        rebuilt["session"]["engine"] == "built" and rebuilt["session"]["engine_key"] != session["engine_key"]
    )
    assert trt.BUILDS[-1]["timing_cache_in"] == "+"  # the first build's timing cache was reused


def test_plan_dla_core_reaches_the_builder(standin, trt_int8: Path, tmp_path: Path) -> None:
    trt, _ = standin
    plan = json.loads((trt_int8.parent / agent.PLAN_NAME).read_text())
    engine, _, _ = agent.build_engine(trt, trt_int8.read_bytes(), {**plan, "dla_core": 1})
    header = trt.BUILDS[-1]
    assert header["device"] == "DLA" and header["dla_core"] == 1 and "GPU_FALLBACK" in header["flags"]
    assert engine.startswith(trt.MAGIC)


def test_tensorrt_errors_name_the_fix(standin, trt_int8: Path, tmp_path: Path, monkeypatch) -> None:
    trt, _ = standin
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.onnx").write_bytes(trt_int8.read_bytes())
    with pytest.raises(agent.AgentError, match=r"needs the build plan build_engine.json"):
        agent.open_session(lone / "model.onnx", 1, "tensorrt")
    with pytest.raises(agent.AgentError, match=r"the tensorrt runtime runs .onnx files"):
        agent.open_session(tmp_path / "model.xml", 1, "tensorrt")
    cache = tmp_path / "engines"
    monkeypatch.setattr(trt, "UNSUPPORTED", {"MatMul"})
    with pytest.raises(
        agent.AgentError, match=r"rejected the model: In node .*No importer registered for op: MatMul"
    ):
        agent.open_session(trt_int8, 1, "tensorrt", engine_cache=cache)
    monkeypatch.setattr(trt, "UNSUPPORTED", set())
    monkeypatch.setenv("STANDIN_TRT_BUILD_FAILS", "1")
    with pytest.raises(agent.AgentError, match="could not build an engine"):
        agent.open_session(trt_int8, 1, "tensorrt", engine_cache=cache)
    assert not list(cache.glob("*.engine"))  # nothing half-built is cached
    monkeypatch.delenv("STANDIN_TRT_BUILD_FAILS")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(agent.AgentError, match=r"needs cuda-python .* pip install cuda-python"):
        agent.open_session(trt_int8, 1, "tensorrt", engine_cache=cache)


def test_missing_tensorrt_points_to_jetpack(trt_int8: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(
        agent.AgentError, match=r"runtime tensorrt is not installed on this device .* JetPack"
    ):
        agent.open_session(trt_int8, 1, "tensorrt")


def test_engine_cache_key_changes_with_each_input() -> None:
    plan = {"flags": ["FP16", "INT8"], "workspace_mib": 1024}
    base = agent.engine_cache_key(b"onnx", plan, "10.3", "Orin")
    assert base == agent.engine_cache_key(b"onnx", dict(reversed(plan.items())), "10.3", "Orin")
    assert len({
        base,
        agent.engine_cache_key(b"onnx2", plan, "10.3", "Orin"),
        agent.engine_cache_key(b"onnx", {**plan, "flags": ["FP16"]}, "10.3", "Orin"),
        agent.engine_cache_key(b"onnx", plan, "10.7", "Orin"),
        agent.engine_cache_key(b"onnx", plan, "10.3", "A100"),
    }) == 5  # fmt: skip


def test_layer_precisions_read_the_inspector_formats() -> None:
    """Format strings as TensorRT's engine inspector writes them (DETAILED verbosity)."""
    info = {
        "Layers": [
            {"Name": "a", "LayerType": "CaskConvolution",
             "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}]},
            {"Name": "b", "LayerType": "CaskGemm", "Inputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
            {"Name": "c", "LayerType": "Normalization", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
            {"Name": "d", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Float"}]},
            {"Name": "e", "LayerType": "Softmax", "Inputs": [{"Format/Datatype": "Half"}]},
            "names-only entry",
        ]
    }  # fmt: skip
    got = agent.layer_precisions(info)
    assert got["counts"] == {"int8": 1, "fp16": 2, "fp32": 2}
    assert [layer["precision"] for layer in got["layers"]] == ["int8", "fp16", "fp32", "fp32", "fp16"]


def test_agent_command_runs_tensorrt(standin, trt_int8: Path, bundle: Path, tmp_path: Path) -> None:
    """The agent as the device runs it: a subprocess, the plan found beside the ONNX."""
    cmd = [sys.executable, str(Path(agent.__file__)), str(trt_int8), "--runtime", "tensorrt", "--runs", "3"]
    cmd += ["--bundle", str(bundle), "--engine-cache", str(tmp_path / "c"), "--lock", str(tmp_path / "lock")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"] and doc["runtime"] == "tensorrt", proc.stderr
    assert doc["session"]["engine"] == "built" and doc["accuracy"]["samples"] == 12
