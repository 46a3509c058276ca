"""Target and Runner: the two abstractions every backend implements.

A Target turns the exported ONNX model into a backend artifact (``lower``) and opens a Runner
on it. A Runner's public ``infer`` checks inputs and outputs once for all backends; subclasses
implement ``_load``/``_infer``/``_close`` only.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from edgevit.devices import DeviceProfile
from edgevit.errors import LoweringError, TargetUnavailableError
from edgevit.models.config import ModelConfig
from edgevit.quant.settings import QuantizeStage

if TYPE_CHECKING:
    from edgevit.check.bundle import Inputs
    from edgevit.quant.scheme import Int8Scheme

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and why not; ``note``: a caveat when it can (e.g. simulation)."""

    available: bool
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class LowerRequest:
    """Everything a Target needs to build one artifact."""

    onnx_path: Path
    precision: str
    model_config: ModelConfig
    options: dict[str, Any]
    quantize: QuantizeStage | None = None
    calibration: np.ndarray | None = None  # preprocessed N x C x H x W float32
    # The float model as a checkpoint dir, for backends that convert from torch.
    checkpoint: Path | None = None
    # Where the artifact will run (a backend may build for it, e.g. Core ML's deployment target).
    device: DeviceProfile | None = None


class Runner(ABC):
    """Runs one artifact. Use as a context manager: ``with runner: runner.infer(batch)``.

    ``simulated`` names the simulation when the runner is not the backend's own runtime (e.g.
    ``mil-reference`` for Core ML on Linux): its outputs are reported as ``simulated:<name>`` and
    its latency is not measured.
    """

    simulated: ClassVar[str | None] = None
    device: DeviceProfile | None = None  # the profile it runs under (set by Target.runner)

    def __init__(self, artifact: Path, threads: int, input_shape: tuple[int, int, int]) -> None:
        self.artifact = artifact
        self.threads = threads
        self.input_shape = input_shape
        self._open = False

    def __enter__(self) -> Runner:
        self._load()
        self._open = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        self._close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a float32 N x C x H x W batch; return its float32 outputs: N x num_classes logits, or
        a dense task's N x C x H x W maps (as the backend lays them out: the task normalises)."""
        if not self._open:
            raise RuntimeError("open the runner first: `with runner: ...`")
        if batch.dtype != np.float32 or batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"expected float32 N x {self.input_shape}, got {batch.dtype} {batch.shape}")
        out = np.asarray(self._infer(np.ascontiguousarray(batch)), dtype=np.float32)
        if out.ndim not in (2, 4) or out.shape[0] != batch.shape[0]:
            raise LoweringError(f"{self.artifact} returned shape {out.shape} for batch {batch.shape}")
        return out

    def infer_all(self, x: Inputs, batch: int) -> np.ndarray:
        """Logits for every image of ``x``, run ``batch`` at a time."""
        return np.concatenate([self.infer(x[i : i + batch]) for i in range(0, len(x), batch)])

    def findings(self) -> dict[str, Any]:
        """What running the artifact revealed, for the report (e.g. a simulation's overflow checks)."""
        return {}

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # noqa: B027  (optional hook)
        """Release backend resources."""


class Target(ABC):
    """A backend: what it builds, whether it runs here, how to lower and run."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    modules: ClassVar[tuple[str, ...]]  # import names whose presence makes the backend available
    extra: ClassVar[str]  # pip extra that installs it
    revision: ClassVar[int] = 1  # bump when lowering changes its output: invalidates cached artifacts
    artifact_name: ClassVar[str]  # the main file lower() writes into its workdir
    options_schema: ClassVar[type[BaseModel] | None] = None  # what `targets[].options` may hold
    calibration_methods: ClassVar[tuple[str, ...]] = ("minmax", "percentile", "entropy")
    # Whether lower() honours the quantize stage's float_layers (and so the automatic fallback).
    float_layers: ClassVar[bool] = False

    def parse_options(self, options: dict[str, Any], precision: str) -> BaseModel | None:
        """Validate a target's ``options`` for ``precision`` (raises ValidationError or ValueError)."""
        if self.options_schema is None:
            if options:
                raise ValueError(f"backend {self.name} takes no options, got {', '.join(sorted(options))}")
            return None
        return self.options_schema.model_validate(options)

    def build_settings(self, request: LowerRequest) -> dict[str, Any]:
        """What ``lower`` decides from the request's device (and options) beyond the recipe, e.g. a
        TensorRT version or an INT8 weight range: part of the artifact's cache key, and reported."""
        return {}

    def int8_scheme(self, request: LowerRequest) -> Int8Scheme | None:
        """The INT8 grid ``lower`` builds for ``request`` (see :mod:`edgevit.quant.scheme`), which
        ``lower`` itself reads; None where the request is not static INT8 or the grid is not
        modelled (then no equalization or simulated sensitivity for it)."""
        return None

    def describe(self, artifact: Path) -> dict[str, Any]:
        """Facts about a built artifact for the report (e.g. op counts by precision)."""
        return {}

    def quantized_layers(self, artifact: Path, onnx_path: Path) -> list[str] | None:
        """The layers (module paths, as in ``onnx_path``) an INT8 artifact quantizes, for the
        fallback search; None leaves it to the layer-wise comparison (ONNX and OpenVINO)."""
        return None

    def availability(self) -> Availability:
        """Import the backend's modules; report versions or the reason it cannot run."""
        versions = {}
        for module in self.modules:
            try:
                mod = importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken native library
                return Availability(
                    False,
                    f"{module} is not importable ({type(exc).__name__}: {str(exc)[:120]}); "
                    f"install it with: pip install 'edgevit[{self.extra}]'",
                )
            versions[module] = str(getattr(mod, "__version__", getattr(mod, "get_version", lambda: "?")()))
        return Availability(True, "", versions)

    def require(self) -> Availability:
        """Like availability(), but raise TargetUnavailableError when the backend cannot run."""
        avail = self.availability()
        if not avail.available:
            raise TargetUnavailableError(f"backend {self.name} is unavailable: {avail.reason}")
        return avail

    @abstractmethod
    def lower(self, request: LowerRequest, workdir: Path) -> Path:
        """Build the artifact for ``request`` inside ``workdir``; return its main file."""

    runner_class: ClassVar[type[Runner] | None] = None  # the Runner of this backend's artifacts

    def runner_type(self, device: DeviceProfile | None) -> type[Runner]:
        """The Runner class for ``device`` (a backend may choose by host, e.g. a simulation)."""
        if self.runner_class is None:
            raise NotImplementedError(
                f"backend {self.name} sets no runner_class and does not override runner_type()"
            )
        return self.runner_class

    def runner(
        self,
        artifact: Path,
        threads: int,
        input_shape: tuple[int, int, int],
        device: DeviceProfile | None = None,
    ) -> Runner:
        """A Runner for an artifact this target built (``device``: the profile it runs under)."""
        runner = self.runner_type(device)(artifact, threads, input_shape)
        runner.device = device
        return runner
