"""edgevit profile: the agent run locally and through a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgevit import agent
from edgevit.profiling import ProfileError, profile

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]


def shape(doc):
    """The document's structure: nested keys (values' types where they are leaves)."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [shape(v) for v in doc[:1]]
    return type(doc).__name__ if not isinstance(doc, (int, float)) else "number"


def test_local_and_ssh_profiles_agree(sshd, tiny_onnx, bundle) -> None:
    local = profile(tiny_onnx, "local", runs=200, warmup=20, bundle=bundle).results[0]
    remote = profile(tiny_onnx, sshd.url(sys.executable), runs=200, warmup=20, bundle=bundle).results[0]
    assert shape(local) == shape(remote)
    assert local["where"] == "device:local" and remote["where"] == "device:127.0.0.1"
    assert remote["accuracy"]["agreement"] == 1.0 and remote["accuracy"]["cosine"] > 0.9999
    # Same machine, same code: p50s within this VM's noise (it moves up to 2x between runs).
    assert abs(math.log(remote["latency_ms"]["p50"] / local["latency_ms"]["p50"])) < math.log(2.5)
    assert remote["latency_ms"]["runs"] == 200 and remote["peak_rss_mb"] > 0


@pytest.fixture(scope="session")
def minimal_python(tmp_path_factory) -> str:
    """A virtual environment with only NumPy and ONNX Runtime (versions from the lock)."""
    root = tmp_path_factory.mktemp("minimal-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    pins = [
        line
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if line.split("==")[0].lower() in ("numpy", "onnxruntime")
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--disable-pip-version-check",
            *pins,
        ],
        check=True,
        capture_output=True,
    )
    probe = "import numpy, onnxruntime\ntry:\n import torch\nexcept ImportError: print('ok')"
    assert subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.strip() == "ok"
    return str(python)


def test_agent_needs_only_numpy_and_the_runtime(sshd, minimal_python, tiny_onnx, bundle, tmp_path) -> None:
    result = profile(tiny_onnx, sshd.url(minimal_python), runs=20, bundle=bundle).results[0]
    assert result["ok"] and result["runtime"] == "onnxruntime" and result["accuracy"]["agreement"] == 1.0
    assert set(result["versions"]) == {"onnxruntime"}
    ir = tmp_path / "model.xml"
    ir.write_text("<net/>")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ProfileError, match="runtime openvino is not installed on this device"):
        profile(ir, sshd.url(minimal_python), runs=5)


def test_wrong_artifact_type_is_a_clear_error(sshd, tmp_path) -> None:
    wrong = tmp_path / "model.pt"
    wrong.write_bytes(b"not a model")
    with pytest.raises(
        ProfileError, match=r"unknown artifact type \.pt; the agent runs \.onnx, \.tflite, \.xml"
    ):
        profile(wrong, sshd.url(sys.executable), runs=5)


def test_connection_loss_mid_run_writes_nothing(sshd, tiny_onnx, tmp_path) -> None:
    out = tmp_path / "profile.json"
    cmd = [
        sys.executable, "-m", "edgevit.cli", "profile", str(tiny_onnx), "--device", sshd.url(sys.executable),
        "--duration", "60", "-o", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # copied and running
    assert proc.poll() is None
    sshd.kill_all()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.count("\n") == 1 and "unreachable or the connection was lost" in err, err
    assert not out.exists()


def test_unreachable_profile_device_is_named(tiny_onnx) -> None:
    with pytest.raises(ProfileError, match=r"jetson-orin-nano\.local is unreachable"):
        profile(tiny_onnx, "jetson-orin-nano", runs=5)
    with pytest.raises(ProfileError, match=r"m\.onnx: an Android phone runs \.tflite models here"):
        profile(tiny_onnx, "pixel-8", runs=5)
    with pytest.raises(ProfileError, match="unreachable: its profile has transport none"):
        profile(tiny_onnx, "iphone-15", runs=5)


def test_two_profiles_on_one_device_do_not_overlap(tmp_path) -> None:
    lock = tmp_path / "agent.lock"
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with agent.DeviceLock(lock, 1.0):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with pytest.raises(agent.AgentError, match="device busy"), agent.DeviceLock(lock, 0.5):
        pass
    release.set()
    thread.join()
    with agent.DeviceLock(lock, 0.5):  # free again
        pass


@pytest.mark.parametrize("name", ["agent.py", "scoring.py"])
def test_agent_files_are_python38_and_self_contained(name: str) -> None:
    """agent.py and the scoring.py shipped beside it import only the standard library, NumPy,
    the runtimes, and each other (never the edgevit package)."""
    import ast

    source = Path(agent.__file__).with_name(name).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        ("." * node.level + (node.module or "")) if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    roots = {i.split(".")[0] for i in imported if not i.startswith(".")}
    assert "edgevit" not in roots and roots <= set(sys.stdlib_module_names) | {
        "numpy", "__future__", "ai_edge_litert", "tflite_runtime", "cuda",  # cuda-python, for TensorRT
        "scoring",  # the sibling file, on a device
    }  # fmt: skip
    assert {i for i in imported if i.startswith(".")} <= {"."}  # `from . import scoring`, in the package


def test_cli_profiles_a_build_directory(tmp_path, tiny_onnx, bundle) -> None:
    build = tmp_path / "b"
    (build / "targets" / "t").mkdir(parents=True)
    (build / "eval").mkdir()
    (build / "targets" / "t" / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    (build / "eval" / "bundle.npz").write_bytes(bundle.read_bytes())
    report = {
        "targets": [
            {"name": "t", "backend": "onnxruntime", "artifact": "targets/t/model.onnx"},
            {"name": "c", "backend": "coreml", "artifact": None},
        ]
    }
    (build / "report.json").write_text(json.dumps(report))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgevit.cli",
            "profile",
            str(build),
            "--device",
            "local",
            "--runs",
            "10",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["target"] for r in doc["results"]] == ["t"] and doc["results"][0]["accuracy"]["samples"] == 12
