"""The equalize step of an INT8 target: choose a strength with the simulator, fold it, export.

Runs once per (model, calibration, backend scheme) as a cached build step; the target then
lowers the equalized ONNX (and TFLite and Core ML convert the equalized checkpoint) instead of the
plain export. A request whose INT8 grid the simulator does not model (``scheme_for`` returns
None: TFLite's dynamic/weight-only/full modes, Core ML weight-only, hand-set ranges)
gets no step and is reported as such.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgevit.fileio import atomic_write_json
from edgevit.models.config import ModelConfig
from edgevit.models.load import save
from edgevit.quant.equalize import choose_alpha, equalize
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import Scope
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets.base import LowerRequest

RECORD = "equalize.json"


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


def run_equalize(
    model: nn.Module,
    config: ModelConfig,
    scheme: Int8Scheme,
    stage: QuantizeStage,
    calibration: np.ndarray,
    out_dir: Path,
) -> dict[str, Any]:
    """Write the equalized checkpoint, its ONNX export and ``equalize.json`` into ``out_dir``."""
    choice = choose_alpha(model, scheme, calibration, scope=Scope.of(stage))
    equalized = copy.deepcopy(model)
    pairs = [] if choice.alpha is None else equalize(equalized, calibration, choice.alpha)
    save(equalized, config, out_dir)
    export_onnx(equalized, config.input_size, out_dir / "model.onnx")
    record = {
        "scheme": asdict(scheme),
        "alpha": choice.alpha,
        "simulated_sqnr_db": choice.sqnr_db,
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
