from pathlib import Path

import pytest

from edgevit.errors import BuildDirError
from edgevit.fileio import atomic_write_text, confined
from edgevit.workspace import Workspace


def test_steps_are_cached_by_key_and_rebuilt_when_outputs_change(tmp_path: Path) -> None:
    calls = []

    def produce(d: Path) -> None:
        calls.append(d)
        (d / "out.txt").write_text(f"run {len(calls)}")

    ws = Workspace(tmp_path)
    first = ws.step("a", {"x": 1}, produce)
    assert not first.reused and (tmp_path / "a" / "out.txt").read_text() == "run 1"
    assert Workspace(tmp_path).step("a", {"x": 1}, produce).reused
    assert len(calls) == 1
    (tmp_path / "a" / "out.txt").write_text("tampered")
    assert not Workspace(tmp_path).step("a", {"x": 1}, produce).reused  # hash mismatch -> rebuild
    assert not Workspace(tmp_path).step("a", {"x": 2}, produce).reused  # new key -> rebuild
    assert len(calls) == 3


def test_failed_step_keeps_the_previous_outputs(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.step("a", {"x": 1}, lambda d: (d / "out.txt").write_text("good"))

    def crash(d: Path) -> None:
        (d / "out.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ws.step("a", {"x": 2}, crash)
    assert (tmp_path / "a" / "out.txt").read_text() == "good"
    assert not any(p.name.endswith(".staging") for p in tmp_path.iterdir())


def test_paths_cannot_escape_the_build_dir(tmp_path: Path) -> None:
    with pytest.raises(BuildDirError, match="outside the build directory"):
        confined(tmp_path, "../etc/passwd")
    with pytest.raises(BuildDirError):
        Workspace(tmp_path).step("../x", {}, lambda d: None)


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_resumable_step_keeps_its_partial_work_for_the_next_run(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    seen: list[bool] = []

    def interrupted(d: Path) -> None:
        (d / "state.txt").write_text("epoch 1")
        raise KeyboardInterrupt

    def resumes(d: Path) -> None:
        seen.append((d / "state.txt").is_file())
        (d / "state.txt").unlink()
        (d / "out.txt").write_text("done")

    with pytest.raises(KeyboardInterrupt):
        ws.step("s", {"x": 1}, interrupted, resumable=True)
    assert not (tmp_path / "s").exists()
    result = ws.step("s", {"x": 1}, resumes, resumable=True)
    assert seen == [True] and set(result.outputs) == {"out.txt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resumable_step_discards_partial_work_of_another_key(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(ZeroDivisionError):
        ws.step("s", {"x": 1}, lambda d: ((d / "state.txt").write_text("old"), 1 / 0), resumable=True)
    seen: list[bool] = []
    ws.step("s", {"x": 2}, lambda d: seen.append((d / "state.txt").exists()), resumable=True)
    assert seen == [False]
