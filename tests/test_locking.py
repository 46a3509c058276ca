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
    lock, release = tmp_path / "x.lock", tmp_path / "release"
    holder = _spawn("-c", HOLD_UNTIL, str(lock), str(release))
    try:
        _wait_for_holder(lock, holder.pid)
        busy = rf"the thing is in use by pid {holder.pid} on "
        with pytest.raises(BusyError, match=busy), FileLock(lock, "the thing", 0):
            pass
        heard: list[str] = []

        def log(line: str) -> None:  # told to wait: now let the holder go
            heard.append(line)
            release.touch()

        with FileLock(lock, "the thing", 120, log):
            assert holder.poll() is not None  # it had to finish first
        assert heard[0].startswith(f"waiting for the thing: in use by pid {holder.pid}"), heard
    finally:
        release.touch()
        holder.kill()
        holder.wait()


HOLD_UNTIL = """
import sys, time
from pathlib import Path
from edgevit.locking import FileLock
with FileLock(Path(sys.argv[1]), "test", 0):
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
"""


def _wait_for_text(path: Path, text: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path} never said {text!r}: {path.read_text()}"
        time.sleep(0.1)


def test_two_builds_into_one_directory_take_turns(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Two builds started into one directory while it is busy: both wait, one builds, the other
    then reuses its steps; a third with --wait 0 stops at once. A helper holds the lock first so
    that the two builds surely overlap, however fast the machine."""
    targets = [
        {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
        {"name": "ort-fp32", "backend": "onnxruntime", "precision": "fp32"},
    ]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_checkpoint, targets))
    out = tmp_path / "same"
    release = tmp_path / "release"
    holder = _spawn("-c", HOLD_UNTIL, str(out / ".edgevit.lock"), str(release))
    builds, logs = [], [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        _wait_for_holder(out / ".edgevit.lock", holder.pid)
        at_once = run_cli("build", str(recipe), "-o", str(out), "--wait", "0")
        for log in logs:
            with log.open("w") as handle:
                builds.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "edgevit.cli", "build", str(recipe), "-o", str(out)],
                        cwd=REPO,
                        stdout=subprocess.DEVNULL,
                        stderr=handle,
                    )
                )
        for log in logs:  # both are running and waiting for the directory
            _wait_for_text(log, f"waiting for build directory {out}: in use by pid {holder.pid}")
        release.touch()
        codes = [b.wait(timeout=1200) for b in builds]
    finally:
        release.touch()
        for p in (holder, *builds):
            p.kill()
            p.wait()
    lines = at_once.stderr.strip().splitlines()
    assert at_once.returncode == 2 and len(lines) == 1, at_once.stderr
    assert f"build directory {out} is in use by pid {holder.pid}" in lines[0], lines[0]
    errs = [log.read_text() for log in logs]
    assert codes == [0, 0], errs
    # one of them built; the other found every step complete and reused it
    assert sum(err.count("(artifact reused)") == 2 for err in errs) == 1, errs
    assert (out / "manifest.json").is_file() and (out / "reference" / "config.json").is_file()
    check = run_cli("validate", str(out), "--quiet")
    assert check.returncode == 0, check.stderr


TRAIN_TINY_BUILTIN = """
import sys, time
from pathlib import Path
import edgevit.builtin as builtin
import edgevit.train
from edgevit.train import TrainConfig

real_train = edgevit.train.train
def held_train(*args, **kwargs):
    while not Path(sys.argv[1]).exists():  # hold the cache entry until the test lets go
        time.sleep(0.05)
    return real_train(*args, **kwargs)
edgevit.train.train = held_train
builtin.BUILTINS["tiny"] = TrainConfig(model_kwargs={"depth": 1}, epochs=1, seed=0)
print(builtin.resolve_builtin("tiny", progress=False))
"""


def test_two_processes_missing_a_builtin_model_train_it_once(tmp_path: Path) -> None:
    env = {"EDGEVIT_CACHE": str(tmp_path / "cache")}
    release, second_log = tmp_path / "release", tmp_path / "second.log"
    first = _spawn("-c", TRAIN_TINY_BUILTIN, str(release), env=env)
    second = None
    try:
        locks = tmp_path / "cache" / "models"
        deadline = time.monotonic() + 120
        while not list(locks.glob(".tiny-*.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        _wait_for_holder(next(locks.glob(".tiny-*.lock")), first.pid)
        with second_log.open("w") as handle:
            second = subprocess.Popen(
                [sys.executable, "-c", TRAIN_TINY_BUILTIN, str(release)],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
            )
        _wait_for_text(second_log, "waiting for the model cache entry builtin:tiny")
        release.touch()
        first_out, first_err = first.communicate(timeout=600)
        second_out, _ = second.communicate(timeout=600)
    finally:
        release.touch()
        for p in (first, second):
            if p is not None:
                p.kill()
                p.wait()
    second_err = second_log.read_text()
    assert first.returncode == 0 and second.returncode == 0, first_err + second_err
    assert first_out == second_out  # the same cache entry
    assert "training builtin:tiny once" in first_err
    assert "training builtin:tiny" not in second_err  # it reused what the first one trained
    trained = Path(first_out.strip())
    assert json.loads((trained / "train.json").read_text())["val_top1"] is not None
