"""GPTQ weight rounding per INT8 grid as a cached build step (``quantize.weight_rounding: gptq``)."""

from __future__ import annotations

import json
from typing import Any

from edgevit.pipeline.context import BuildContext
from edgevit.recipe.schema import TargetSpec
from edgevit.stages.equalize import scheme_for
from edgevit.stages.gptq import RECORD, rounded_request, run_gptq, step_key
from edgevit.targets import LowerRequest


def round_weights(
    ctx: BuildContext, spec: TargetSpec, request: LowerRequest, onnx_sha: str, calib_sha: str | None
) -> tuple[str, dict[str, Any]]:
    """Point ``request`` at its model with GPTQ-rounded weights for ``spec``'s INT8 grid (one cached
    step per grid and input model); return that ONNX's sha256 (``onnx_sha`` where nothing was
    rounded) and what the report says about it."""
    scheme = scheme_for(spec.backend, request)
    if scheme is None:
        note = f"not applied: the INT8 simulator does not model {spec.backend} with these options"
        ctx.log(f"{spec.name}: gptq {note}")
        return onnx_sha, {"applied": False, "reason": note}
    stage, calibration, checkpoint = request.quantize, request.calibration, request.checkpoint
    assert stage is not None and calibration is not None and checkpoint is not None
    step = ctx.ws.step(
        f"gptq/{scheme.tag}",
        {
            "input_onnx": onnx_sha,  # the equalized or plain export of the model it rounds
            "calibration": calib_sha,
            **step_key(scheme, stage),
            "torch": ctx.versions["torch"],
        },
        lambda d: run_gptq(checkpoint, scheme, stage, calibration, d),
        {"producer": "stages.gptq"},
    )
    record = json.loads(step.path(RECORD).read_text())
    rounded = rounded_request(request, step.directory, record)
    request.onnx_path, request.checkpoint = rounded.onnx_path, rounded.checkpoint
    reused = " (reused)" if step.reused else ""
    if not record["applied"]:
        ctx.log(f"{spec.name}: gptq not applied ({record['reason']}){reused}")
        return onnx_sha, {**record, "step": step.name}
    db = record["weight_sqnr_db"]
    ctx.log(
        f"{spec.name}: gptq rounded {record['layers']} Linear layers onto {scheme.tag}: weight error "
        f"{db['nearest']} -> {db['gptq']} dB below the outputs on the calibration images{reused}"
    )
    return step.outputs["model.onnx"], {**record, "step": step.name, "reused": step.reused}
