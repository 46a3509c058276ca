"""The equalize step of an INT8 target: choose a strength with the simulator, confirm it on the
built artifact, fold it, export.

Runs once per (model, calibration, backend scheme) as a cached build step; the target then
lowers the equalized ONNX (and TFLite and Core ML convert the equalized checkpoint) instead of the
plain export. A request whose INT8 grid the simulator does not model (``scheme_for`` returns
None: TFLite's dynamic/weight-only/full modes, Core ML weight-only, hand-set ranges)
gets no step and is reported as such.

The simulator chooses among strengths without a build, but a model whose few outlier channels
carry the logits can swing by a few dB between two grids of the same quality (seen with
OpenVINO's 7-bit weights on an AVX2 host: the simulator's pick lost 2.9 dB to no equalization).
So where the pipeline can build and run the target here (``measure``), the chosen strength is
kept only if the artifact built from it beats the plain model's artifact by ``MARGIN_DB`` on the
calibration images too: equalization is then never worse than off on what it can measure.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevit.check.layerwise import outputs_sqnr_db
from edgevit.errors import EdgeVitError
from edgevit.fileio import atomic_write_json
from edgevit.models.config import ModelConfig
from edgevit.models.load import save
from edgevit.quant.equalize import MARGIN_DB, choose_alpha, equalize
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import Scope
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets.base import LowerRequest

RECORD = "equalize.json"
# Builds the target from an export (None: the plain model's; a directory: the checkpoint and
# model.onnx written there) and returns its output SQNR against the float model on the
# calibration images.
Measure = Callable[[Path | None], float]


def scheme_for(backend: str, request: LowerRequest) -> Int8Scheme | None:
    """The INT8 grid ``backend`` builds for ``request`` (the target's own ``int8_scheme``), where the
    simulator models it (every static INT8 grid, any scope)."""
    from edgevit.targets import TARGETS

    q = request.quantize
    if q is None or request.precision != "int8":
        return None
    target = TARGETS.get(backend)
    options = target.parse_options(request.options, request.precision)
    if getattr(options, "activation_scale_factors", None):
        return None  # hand-scaled quantizer ranges: not the grid calibration gives
    return target.int8_scheme(request)


def artifact_sqnr(
    backend: str,
    request: LowerRequest,
    model: nn.Module,
    threads: int,
    batch: int,
    scratch: Path,
    normalise: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None,
) -> Measure | None:
    """What confirms an equalization strength: ``backend``'s target built from an export (in a
    temporary folder under ``scratch``) at ``request``'s settings and run here on its calibration
    images, its outputs' SQNR against ``model``'s (``normalise``: the task's layout rule). None
    where this host does not run the artifact as its device would (a remote device's CPU may add
    its INT8 products otherwise) or cannot run the backend at all."""
    from edgevit.targets import TARGETS

    target = TARGETS.get(backend)
    device = request.device
    if (device is not None and device.transport != "local") or not target.availability().available:
        return None
    calibration = request.calibration
    assert calibration is not None

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(model.eval()(torch.from_numpy(x)).numpy())

    def measure(export: Path | None) -> float:
        built = (
            request
            if export is None
            else replace(request, onnx_path=export / "model.onnx", checkpoint=export)
        )
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".equalize-check-") as work:
            artifact = target.lower(built, Path(work))
            size = request.model_config.input_size
            with target.runner(artifact, threads, size, device) as runner:
                return outputs_sqnr_db(reference, runner.infer, calibration, batch, normalise)

    return measure


def run_equalize(
    model: nn.Module,
    config: ModelConfig,
    scheme: Int8Scheme,
    stage: QuantizeStage,
    calibration: np.ndarray,
    out_dir: Path,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """Write the equalized checkpoint, its ONNX export and ``equalize.json`` into ``out_dir``;
    with ``measure``, a strength the simulator chose is confirmed on the built artifacts first."""
    choice = choose_alpha(model, scheme, calibration, scope=Scope.of(stage))
    alpha = choice.alpha
    equalized = copy.deepcopy(model)
    pairs = [] if alpha is None else equalize(equalized, calibration, alpha)
    save(equalized, config, out_dir)
    export_onnx(equalized, config.input_size, out_dir / "model.onnx")
    measured: dict[str, float] | None = None
    reason = note = None
    if alpha is not None and measure is not None:
        try:
            off, on = measure(None), measure(out_dir)
        except EdgeVitError as exc:  # built but not runnable here, say: the simulator's choice stands
            note = f"not confirmed on the built artifact ({exc})"
        else:
            measured = {"off": round(off, 2), f"{alpha:g}": round(on, 2)}
        if measured is not None and on < off + MARGIN_DB:
            reason = (
                f"the simulator's alpha {alpha:g} did not beat no equalization by {MARGIN_DB:g} dB "
                "on the built artifact (measured on the calibration images)"
            )
            alpha, pairs = None, []
            save(model, config, out_dir)
            export_onnx(model, config.input_size, out_dir / "model.onnx")
    record = {
        "scheme": asdict(scheme),
        "alpha": alpha,
        **({"simulated_alpha": choice.alpha, "reason": reason} if reason else {}),
        **({"note": note} if note else {}),
        "simulated_sqnr_db": choice.sqnr_db,
        **({"measured_sqnr_db": measured} if measured is not None else {}),
        "pairs": [
            {
                "producer": p.producer,
                "consumers": list(p.consumers),
                "scale_min": round(p.scale_min, 4),
                "scale_max": round(p.scale_max, 4),
            }
            for p in pairs
        ],
    }
    atomic_write_json(out_dir / RECORD, record)
    return record
