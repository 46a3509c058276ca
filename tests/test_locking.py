"""Locks with real concurrent processes: a build directory and a builtin-model cache entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgevit.errors import BusyError
from edgevit.locking import FileLock
from tests.conftest import REPO, run_cli, tiny_recipe, write_recipe

HOLD = """
import sys, time
from pathlib import Path
from edgevit.locking import FileLock
with FileLock(Path(sys.argv[1]), "test", 0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _wait_for_holder(lock: Path, pid: int, timeout_s: float = 120) -> None:
    """Until the process ``pid`` has written itself into ``lock`` (it holds the lock then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took {lock}")


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_held_lock_fails_at_once_or_waits_then_goes_on(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = _spawn("-c", HOLD, str(lock), "3")
    try:
        _wait_for_holder(lock, holder.pid)
        busy = rf"the thing is in use by pid {holder.pid} on "
        with pytest.raises(BusyError, match=busy), FileLock(lock, "the thing", 0):
            pass
        heard: list[str] = []
        started = time.monotonic()
        with FileLock(lock, "the thing", 60, heard.append):
            assert holder.poll() is not None  # it had to finish first
        assert time.monotonic() - started > 0.5
        assert heard and heard[0].startswith(f"waiting for the thing: in use by pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_two_builds_into_one_directory_take_turns(tmp_path: Path, tiny_checkpoint: Path) -> None:
    pytest.importorskip("openvino")
    targets = [
        {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
        {"name": "ov-int8", "backend": "openvino", "precision": "int8"},
    ]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_checkpoint, targets))
    out = tmp_path / "same"
    first = _spawn("-m", "edgevit.cli", "build", str(recipe), "-o", str(out), "--quiet")
    try:
        _wait_for_holder(out / ".edgevit.lock", first.pid)
        at_once = run_cli("build", str(recipe), "-o", str(out), "--wait", "0")
        second = _spawn("-m", "edgevit.cli", "build", str(recipe), "-o", str(out))
        _, second_err = second.communicate(timeout=1200)
        _, first_err = first.communicate(timeout=1200)
    finally:
        first.kill()
    lines = at_once.stderr.strip().splitlines()
    assert at_once.returncode == 2 and len(lines) == 1, at_once.stderr
    assert f"build directory {out} is in use by pid {first.pid}" in lines[0], lines[0]
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert f"waiting for build directory {out}: in use by pid {first.pid}" in second_err
    assert "(artifact reused)" in second_err  # it found the first build's steps complete
    assert (out / "manifest.json").is_file() and (out / "reference" / "config.json").is_file()
    check = run_cli("validate", str(out), "--quiet")
    assert check.returncode == 0, check.stderr


TRAIN_TINY_BUILTIN = """
import sys, time
import edgevit.models.builtin as builtin
import edgevit.train
from edgevit.train import TrainConfig

real_train = edgevit.train.train
def slow_train(*args, **kwargs):
    time.sleep(float(sys.argv[1]))  # hold the cache entry long enough for the other process to arrive
    return real_train(*args, **kwargs)
edgevit.train.train = slow_train
builtin.BUILTINS["tiny"] = TrainConfig(model_kwargs={"depth": 1}, epochs=1, seed=0)
print(builtin.resolve_builtin("tiny", progress=False))
"""


def test_two_processes_missing_a_builtin_model_train_it_once(tmp_path: Path) -> None:
    env = {"EDGEVIT_CACHE": str(tmp_path / "cache")}
    first = _spawn("-c", TRAIN_TINY_BUILTIN, "5", env=env)
    try:
        locks = tmp_path / "cache" / "models"
        deadline = time.monotonic() + 120
        while not list(locks.glob(".tiny-*.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        _wait_for_holder(next(locks.glob(".tiny-*.lock")), first.pid)
        second = _spawn("-c", TRAIN_TINY_BUILTIN, "0", env=env)
        second_out, second_err = second.communicate(timeout=600)
        first_out, first_err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0 and second.returncode == 0, first_err + second_err
    assert first_out == second_out  # the same cache entry
    assert "training builtin:tiny once" in first_err
    assert "waiting for the model cache entry builtin:tiny" in second_err
    assert "training builtin:tiny" not in second_err  # it reused what the first one trained
    trained = Path(first_out.strip())
    assert json.loads((trained / "train.json").read_text())["val_top1"] is not None
