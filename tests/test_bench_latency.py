"""tools/bench_latency.py as a user runs it: every backend by default, a table, then one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgevit.targets import TARGETS
from tests.conftest import REPO

QUICK = ("--model", "vit_plus_tiny_patch8_32", "--rounds", "2", "--runs", "3", "--warmup", "1")


def _bench(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_latency.py"), *QUICK, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_default_backends_time_what_runs_here_and_name_the_rest() -> None:
    doc, table = _bench()
    for name in TARGETS.names():
        target = TARGETS.get(name)
        simulated = target.runner_type(None).simulated
        if not target.availability().available or simulated:
            assert name in doc["not_timed"], (name, doc["not_timed"])
            assert not any(k.startswith(f"{name}_") for k in doc), name  # no figure for it at all
        else:
            assert doc[f"{name}_fp32_p50_ms"] > 0 and doc[f"{name}_int8_p50_ms"] > 0, name
            assert len(doc[f"{name}_int8_round_p50s_ms"]) == 2
    # TensorRT never runs on this host: the table says it is not measured, and why.
    assert "not measured: only simulated on this host" in doc["not_timed"]["tensorrt"]
    assert "tensorrt" in table and "edgevit profile" in table
    assert doc["statistic"] == "median of round p50s" and doc["host"]["cpu_flags"] is not None


def test_a_backend_missing_here_is_skipped_with_the_reason(tmp_path: Path) -> None:
    hidden = tmp_path / "hide" / "openvino"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('openvino hidden by the test')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'hide'}{os.pathsep}{REPO}"}
    doc, _ = _bench("--backends", "openvino,onnxruntime", env=env)
    assert doc["not_timed"]["openvino"].startswith("skipped: openvino is not importable")
    assert "pip install 'edgevit[openvino]'" in doc["not_timed"]["openvino"]
    assert doc["onnxruntime_int8_over_fp32"] > 0
