"""The weight-rounding step of an INT8 target (``quantize.weight_rounding: gptq``): the model the
target lowers (equalized where it was), its Linear weights rounded by GPTQ onto the target's own
weight grid (``edgevit.quant.gptq``), saved and exported again.

Runs once per (input model, calibration, backend scheme, scope) as a cached build step, after the
equalize step and instead of nothing: the backend then quantizes weights that already lie on its
grid, so its round-to-nearest keeps GPTQ's levels. A grid GPTQ cannot serve (OpenVINO with
SmoothQuant) writes a record saying why and no model; the target then builds the model it had.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.fileio import atomic_write_json
from edgevit.models.load import load
from edgevit.quant.gptq import gptq
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import Scope
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.equalize import write_model
from edgevit.targets.base import LowerRequest

RECORD = "gptq.json"


def run_gptq(
    checkpoint: Path, scheme: Int8Scheme, stage: QuantizeStage, calibration: np.ndarray, out_dir: Path
) -> dict[str, Any]:
    """Round the weights of the model in ``checkpoint`` onto ``scheme``'s grid with GPTQ on
    ``calibration`` and write the checkpoint, its ONNX export and ``gptq.json`` into ``out_dir``
    (only the record where the grid is not served)."""
    loaded = load(checkpoint=checkpoint)
    rounded = gptq(loaded.model, scheme, calibration, Scope.of(stage), stage.calibration_batch)
    if rounded.skipped is None:
        write_model(loaded.model, loaded.config, out_dir)
    record = {
        "applied": rounded.skipped is None,
        "scheme": scheme.tag,
        "layers": len(rounded.layers),
        # the Linear outputs' error from their weights, relative to their energy, on the
        # calibration images: each weight rounded to nearest, then GPTQ's rounding
        "weight_sqnr_db": {"nearest": rounded.nearest_db, "gptq": rounded.gptq_db},
        **({"folded_norms": len(rounded.folded_norms)} if rounded.folded_norms else {}),
        **({"rounded_to_nearest": list(rounded.too_few_rows)} if rounded.too_few_rows else {}),
        **({"reason": rounded.skipped} if rounded.skipped else {}),
    }
    atomic_write_json(out_dir / RECORD, record)
    return record


def rounded_request(request: LowerRequest, out_dir: Path, record: dict[str, Any]) -> LowerRequest:
    """``request`` lowering the rounded model in ``out_dir`` (as it was where none was written)."""
    if not record.get("applied"):
        return request
    return replace(request, onnx_path=out_dir / "model.onnx", checkpoint=out_dir)


def step_key(scheme: Int8Scheme, stage: QuantizeStage) -> dict[str, Any]:
    """What the rounding depends on besides the input model and the calibration images."""
    return {"scheme": asdict(scheme), "scope": asdict(Scope.of(stage)), "batch": stage.calibration_batch}
