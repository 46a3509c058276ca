"""The state the parts of one build share."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from pathlib import Path

from edgevit import __version__
from edgevit.data import DataSpec, ImageSource
from edgevit.data.source import verified_sha256
from edgevit.recipe.schema import Recipe
from edgevit.tasks import TASKS, Task
from edgevit.workspace import Workspace

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the artifacts (backends only if installed)."""
    import importlib.metadata as md

    versions = {"edgevit": __version__, "python": platform.python_version()}
    for dist in (
        "torch",
        "timm",
        "onnx",
        "onnxscript",
        "numpy",
        "onnxruntime",
        "openvino",
        "nncf",
        "litert-torch",
        "ai-edge-quantizer",
        "ai-edge-litert",
        "coremltools",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    return versions


class BuildContext:
    """What every part of one build shares: the recipe, the build directory's steps, the log, the
    library versions, the model's task, and the few files one part makes for another."""

    def __init__(self, recipe: Recipe, out_dir: Path, log: Log, progress: bool = False) -> None:
        self.recipe = recipe
        self.progress = progress
        self.ws = Workspace(out_dir)
        self.log = log
        self.versions = library_versions()
        self.task: Task = TASKS.get("classification")  # the reference model's (set by the build)
        self.agent_bundle: Path | None = None  # the evaluation bundle the profiling agent scores against
        self.calibration_file: Path | None = None  # the quantize stage's preprocessed calibration images
        self._hashes: dict[tuple[str, tuple[str, ...]], str] = {}  # see data_sha256

    def data_sha256(self, source: ImageSource, spec: DataSpec) -> str:
        """``source``'s sha256, checked against ``spec``'s: read once per build, however many steps
        (distill, one qat run per INT8 grid) key on the same images (and label order)."""
        key = (spec.model_dump_json(), tuple(source.class_names))
        if key not in self._hashes:
            self._hashes[key] = verified_sha256(source, spec)
        return self._hashes[key]
