"""The build directory: cached steps written atomically, and the manifest of every file.

Each step (a stage, the export, one target's lowering) lives in its own sub-directory with a
``step.json`` record: the key it was built for (sha256 of its inputs and config), and the
sha256 of every output. A step is reused only when its key matches and every output still has
its recorded hash; otherwise it is rebuilt in a staging directory and swapped in whole, so an
interrupted build never leaves a half-written step behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevit.errors import BuildDirError
from edgevit.fileio import (
    atomic_write_json,
    confined,
    ensure_dir,
    replace_dir,
    sha256_bytes,
    sha256_file,
    stable_json,
)
from edgevit.locking import FileLock

# The evaluation images with the logits of the float model the targets were lowered from (written
# when prune/distill stages changed it): what validate and the profiling agent score against.
LOWERED_BUNDLE = "eval-lowered/bundle.npz"

STEP_FILE = "step.json"
# Held by the build writing the directory (and shared by readers such as validate): see lock().
LOCK_FILE = ".edgevit.lock"
# How long a build (or validate) waits for another build of the same directory before it gives up.
DEFAULT_WAIT_S = 1800.0


@dataclass(frozen=True)
class StepResult:
    """Outputs of one step and whether they came from the cache."""

    name: str
    directory: Path
    outputs: dict[str, str]  # relative path -> sha256
    reused: bool
    key: str

    def path(self, relative: str) -> Path:
        """Absolute path of one output."""
        return self.directory / relative


class Workspace:
    """A build directory with cached steps."""

    def __init__(self, root: Path) -> None:
        ensure_dir(root, "build directory")
        self.root = root.resolve()  # step paths are resolved too (confinement); keep both absolute
        self.steps: dict[str, StepResult] = {}

    def lock(self, timeout_s: float, log: Callable[[str], None] | None = None) -> FileLock:
        """The build's exclusive lock on this directory: hold it while writing any step or report,
        so a second build into the same directory waits for the first (then reuses its steps)."""
        return lock_build_dir(self.root, timeout_s, log)

    def _cached(self, directory: Path, key: str) -> dict[str, str] | None:
        record_path = directory / STEP_FILE
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("key") != key:
            return None
        outputs: dict[str, str] = record.get("outputs", {})
        for rel, digest in outputs.items():
            path = confined(directory, rel)
            if not path.is_file() or sha256_file(path) != digest:
                return None  # missing, truncated or edited: rebuild this step
        return outputs

    def step(
        self,
        name: str,
        key_material: dict[str, Any],
        produce: Callable[[Path], object],
        meta: dict[str, Any] | None = None,
        resumable: bool = False,
    ) -> StepResult:
        """Run ``produce(staging_dir)`` unless a step with the same key is already complete.

        Args:
            name: relative directory of the step inside the build (e.g. ``targets/ort-int8``).
            key_material: everything the outputs depend on (input hashes, config, versions).
            produce: writes the step's outputs into the directory it is given.
            meta: extra facts recorded in step.json and the manifest (producer, versions).
            resumable: keep the staging directory when ``produce`` fails or is interrupted, and
                hand it to ``produce`` again on the next run with the same key (training resumes
                from the state it saved there); a staging directory of another key is discarded.
        """
        directory = confined(self.root, name)
        key = sha256_bytes(stable_json(key_material).encode())
        outputs = self._cached(directory, key)
        reused = outputs is not None
        if outputs is None:
            suffix = f"partial-{key[:16]}" if resumable else "staging"
            staging = directory.with_name(f".{directory.name}.{suffix}")
            for stale in directory.parent.glob(f".{directory.name}.*"):
                if stale != staging and stale.is_dir():
                    shutil.rmtree(stale)
            if staging.exists() and not resumable:
                shutil.rmtree(staging)
            staging.mkdir(parents=True, exist_ok=True)
            try:
                produce(staging)
                outputs = {
                    str(p.relative_to(staging)): sha256_file(p)
                    for p in sorted(staging.rglob("*"))
                    if p.is_file() and p.name != STEP_FILE
                }
                atomic_write_json(
                    staging / STEP_FILE,
                    {"step": name, "key": key, "inputs": key_material, "outputs": outputs, **(meta or {})},
                )
                replace_dir(staging, directory)
            except BaseException:
                if not resumable:
                    shutil.rmtree(staging, ignore_errors=True)
                raise
        result = StepResult(name, directory, outputs, reused, key)
        self.steps[name] = result
        return result

    def manifest(self, extra_files: list[Path], versions: dict[str, str]) -> dict[str, Any]:
        """Every file of this build's steps plus ``extra_files``, with sha256 and producer."""
        files = []
        for name, step in sorted(self.steps.items()):
            for rel, digest in sorted(step.outputs.items()):
                path = step.directory / rel
                files.append(
                    {
                        "path": str(path.relative_to(self.root)),
                        "sha256": digest,
                        "size_bytes": path.stat().st_size,
                        "producer": name,
                        "reused": step.reused,
                    }
                )
        for path in extra_files:
            if not path.is_file():
                raise BuildDirError(f"expected build file {path} is missing")
            files.append(
                {
                    "path": str(path.relative_to(self.root)),
                    "sha256": sha256_file(path),
                    "size_bytes": path.stat().st_size,
                    "producer": "report",
                    "reused": False,
                }
            )
        return {"format_version": 1, "versions": versions, "files": files}


def lock_build_dir(
    root: Path, timeout_s: float, log: Callable[[str], None] | None = None, shared: bool = False
) -> FileLock:
    """A lock on build directory ``root``: exclusive for a build, ``shared`` for readers (validate)."""
    return FileLock(
        root / LOCK_FILE,
        f"build directory {root}",
        timeout_s,
        log,
        shared=shared,
        fix="wait for that build to finish (or give a longer --wait), or build into another directory with -o",
    )
