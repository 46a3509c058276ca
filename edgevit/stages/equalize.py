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
from edgevit.models.load import load, save
from edgevit.models.rotation import float_transforms
from edgevit.quant.equalize import (
    MARGIN_DB,
    EqualizedPair,
    best_rotation,
    choose_alpha,
    equalize,
    rotation_key,
)
from edgevit.quant.rotate import Rotation, rotate
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
        built = request
        if export is not None:
            built = replace(request, onnx_path=export / "model.onnx", checkpoint=export)
            with_float_transforms(
                built, {"float_transforms": float_transforms(load(checkpoint=export).model)}
            )
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".equalize-check-") as work:
            artifact = target.lower(built, Path(work))
            size = request.model_config.input_size
            with target.runner(artifact, threads, size, device) as runner:
                return outputs_sqnr_db(reference, runner.infer, calibration, batch, normalise)

    return measure


def _folded(
    model: nn.Module,
    config: ModelConfig,
    calibration: np.ndarray,
    rotate_it: bool,
    alpha: float | None,
    seed: int = 0,
) -> tuple[nn.Module, ModelConfig, Rotation | None, list[EqualizedPair]]:
    """A copy of ``model`` rotated (where asked, the rotation of ``seed``) then equalized at
    ``alpha`` (None: not), with the config that rebuilds it."""
    folded = copy.deepcopy(model)
    rotation = rotate(folded, seed=seed) if rotate_it else None
    pairs = [] if alpha is None else equalize(folded, calibration, alpha)
    if rotation is not None:
        config = config.model_copy(update={"rotation": rotation.spec})
    return folded, config, rotation, pairs


def write_model(model: nn.Module, config: ModelConfig, out_dir: Path) -> None:
    """Save ``model`` with ``config`` into ``out_dir`` and export it to ONNX beside them."""
    save(model, config, out_dir)
    export_onnx(model, config.input_size, out_dir / "model.onnx")


def with_float_transforms(request: LowerRequest, record: dict[str, Any]) -> None:
    """Add the float transforms the equalize step's model carries (``record``'s: a rotation's
    Hadamards) to ``request``'s quantize stage's ``float_layers``, in place: every INT8 target
    keeps them float."""
    q = request.quantize
    extra = [t for t in record.get("float_transforms") or [] if q is not None and t not in q.float_layers]
    if q is not None and extra:
        request.quantize = q.model_copy(update={"float_layers": [*q.float_layers, *extra]})


def run_equalize(
    model: nn.Module,
    config: ModelConfig,
    scheme: Int8Scheme,
    stage: QuantizeStage,
    calibration: np.ndarray,
    out_dir: Path,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """Write the equalized (and, where chosen, rotated) checkpoint, its ONNX export and
    ``equalize.json`` into ``out_dir``; with ``measure``, a choice the simulator made is confirmed
    on the built artifacts first (``rotate: on`` is kept either way; only its scales are confirmed)."""
    forced = stage.rotate == "on"
    scope = Scope.of(stage)
    seed, seed_scores = (
        best_rotation(model, scheme, calibration, scope, stage.rotation_seeds) if forced else (0, {})
    )
    base = _folded(model, config, calibration, True, None, seed)[0] if forced else model
    alphas = (0.5, 0.75, 0.9) if stage.equalize == "auto" else ()
    choice = choose_alpha(
        base, scheme, calibration, alphas, scope, rotate=stage.rotate == "auto", seeds=stage.rotation_seeds
    )
    alpha, rotated = choice.alpha, forced or choice.rotate
    seed = seed if forced else choice.rotate_seed
    folded, out_config, rotation, pairs = _folded(model, config, calibration, rotated, alpha, seed)
    write_model(folded, out_config, out_dir)
    chosen = f"{alpha:g}" if alpha is not None else (rotation_key(seed) if choice.rotate else None)
    measured: dict[str, float] | None = None
    reason = note = None
    if chosen is not None and measure is not None:
        try:
            if forced:  # the baseline is the rotated model without scales
                with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".rotated-") as plain:
                    write_model(base, out_config, Path(plain))
                    off = measure(Path(plain))
            else:
                off = measure(None)
            on = measure(out_dir)
        except EdgeVitError as exc:  # built but not runnable here, say: the simulator's choice stands
            note = f"not confirmed on the built artifact ({exc})"
        else:
            measured = {"off": round(off, 2), chosen: round(on, 2)}
        if measured is not None and on < off + MARGIN_DB:
            reason = (
                f"the simulator's choice {chosen} did not beat {'rotation alone' if forced else 'no equalization'} "
                f"by {MARGIN_DB:g} dB on the built artifact (measured on the calibration images)"
            )
            alpha, pairs = None, []
            folded, out_config, rotation, _ = _folded(model, config, calibration, forced, None, seed)
            write_model(folded, out_config, out_dir)
    record = {
        "scheme": asdict(scheme),
        "alpha": alpha,
        "float_transforms": float_transforms(folded),
        "rotation": None
        if rotation is None
        else {
            "seed": seed,
            "values": rotation.values,
            "residual": rotation.residual,
            "fc2_hadamard": rotation.fc2_hadamard,
            "skipped": list(rotation.skipped),
        },
        **(
            {"simulated_alpha": choice.alpha, "simulated_rotate": choice.rotate, "reason": reason}
            if reason
            else {}
        ),
        **({"note": note} if note else {}),
        "simulated_sqnr_db": {**seed_scores, **choice.sqnr_db},
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
