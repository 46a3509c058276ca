"""The qat stage: quantization-aware distillation against one backend's simulated INT8 grid.

The float model the INT8 target would lower is both the teacher (frozen) and the start of the
student; the student computes through ``edgevit.quant``'s simulation of the target's grid with
straight-through gradients, so training moves its weights to where the backend's own rounding
hurts least. The output is a float checkpoint (and its ONNX) that the target then quantizes with
its own tooling, as it would any model: no backend-specific fork. Resumable and multi-process
through ``train.fit`` like distillation.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from edgevit import distributed
from edgevit.check.layerwise import outputs_sqnr_db
from edgevit.compute import resolve
from edgevit.data import DataSpec, open_data
from edgevit.data.source import require_task, verify
from edgevit.data.stream import Images
from edgevit.fileio import atomic_write_json, ensure_dir
from edgevit.models.load import load, logits_of
from edgevit.quant.outliers import outlier_pairs
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import Scope, Simulation, simulation
from edgevit.recipe.schema import RUN_PLACEMENT, QatStage
from edgevit.stages.distill import kd_loss
from edgevit.stages.export import export_onnx
from edgevit.train import Optim, finish, fit

LOG_FILE = "qat.json"
BATCH = 64  # images per forward pass when scoring on the calibration set


class QatConfig(BaseModel):
    """One quantization-aware distillation run (serializable: torchrun's processes read it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str  # the float checkpoint to start from; also the teacher
    scheme: dict[str, Any]  # an Int8Scheme's fields
    patch_embed: bool = False
    matmuls: bool = False
    float_layers: tuple[str, ...] = ()
    calibration: str  # a .npy of preprocessed calibration images
    data: DataSpec
    base_dir: str | None = None
    settings: QatStage

    @property
    def scope(self) -> Scope:
        """The layers the target quantizes."""
        return Scope(self.patch_embed, self.matmuls, self.float_layers)


def freeze_epoch(settings: QatStage) -> int:
    """The first epoch whose activation ranges stay as the previous epoch left them."""
    return settings.epochs - math.floor(settings.epochs * settings.freeze_ranges + 1e-9)


def _freeze_folded_norms(sim: Simulation) -> None:
    """TFLite's grid folds the block LayerNorms into the next Linear (γ=1, β=0 in the simulated
    model): they stay identities, or the converter would fold a changed γ onto the trained grid."""
    if not sim.scheme.folds_norms:
        return
    for pair in outlier_pairs(sim.model):
        if pair.norm.startswith("blocks."):
            for p in sim.model.get_submodule(pair.norm).parameters():
                p.requires_grad_(False)


def _range_report(sim: Simulation, model: nn.Module, scope: Scope, calibration: np.ndarray) -> dict[str, Any]:
    """How far the ranges the run trained with are from those calibration gives on its output
    (what each backend computes): per layer, the largest difference of a range's ends relative to
    the range's width."""
    fresh = simulation(model, sim.scheme, calibration, scope)

    def rel(a: tuple[float, float], b: tuple[float, float]) -> float:
        return max(abs(a[0] - b[0]), abs(a[1] - b[1])) / max(a[1] - a[0], 1e-12)

    layers = {}
    for name in sim.layers:
        diffs = [rel(a, b) for a, b in zip(sim.inputs[name], fresh.inputs[name], strict=True)]
        if name in sim.outputs:
            diffs.append(rel(sim.outputs[name], fresh.outputs[name]))
        layers[name] = round(max(diffs), 5)
    worst = max(layers, key=lambda n: layers[n]) if layers else None
    return {
        "max_relative_difference": layers[worst] if worst else 0.0,
        "worst_layer": worst,
        "per_layer": layers,
    }


def _run(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    return lambda xb: logits_of(model, xb, BATCH)


def simulated_sqnr(
    model: nn.Module, teacher: nn.Module, scheme: Int8Scheme, scope: Scope, calibration: np.ndarray
) -> float:
    """Output SQNR against ``teacher``'s outputs on the calibration images of ``model`` under
    ``scheme``'s INT8, calibrated afresh on those images as the backend calibrates. The teacher's
    outputs are recomputed batch by batch rather than held: a dense model's are large."""
    sim = simulation(model, scheme, calibration, scope)
    return outputs_sqnr_db(_run(teacher), _run(sim.model), calibration, BATCH)


def qat(cfg: QatConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train into ``out_dir`` (model.safetensors, config.json, model.onnx, ranges.json, qat.json);
    resumable. Run it once per process under torchrun to train with DistributedDataParallel."""
    s = cfg.settings
    compute = resolve(s.device, s.precision)
    world = distributed.init(compute.distributed_backend)
    ensure_dir(out_dir, "output directory")
    loaded = load(checkpoint=Path(cfg.model))
    config, teacher = loaded.config, loaded.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    scheme, scope = Int8Scheme(**cfg.scheme), cfg.scope
    calibration = np.load(cfg.calibration)  # the scores below: on the calibration images
    before = simulated_sqnr(teacher, teacher, scheme, scope, calibration)
    sim = simulation(teacher, scheme, calibration, scope, trainable=True)
    for p in sim.model.parameters():
        p.requires_grad_(True)
    _freeze_folded_norms(sim)
    base = Path(cfg.base_dir) if cfg.base_dir else None
    task = config.task
    source = require_task(open_data(cfg.data, config.class_names, base, task), task, "data.train")
    verify(source, cfg.data)
    images = Images(source, config, pin_memory=compute.cuda)
    teacher.to(compute.device)
    sim.model.to(compute.device)
    frozen_from = freeze_epoch(s)

    def before_epoch(epoch: int) -> None:
        if epoch < frozen_from:
            sim.recalibrate(calibration)

    def loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(xb)
        return kd_loss(net(xb), target, yb, s, task)

    optim = Optim(s.epochs, s.batch_size, s.lr, s.weight_decay, s.warmup_epochs, s.shift_pixels, s.seed)
    t0 = time.perf_counter()
    fitted = fit(
        sim.model,
        images,
        optim,
        loss_fn,
        out_dir,
        cfg.model_dump_json(exclude={"settings": RUN_PLACEMENT}),  # resumable on any device or world
        f"qat {scheme.tag}",
        progress,
        before_epoch=before_epoch,
        extra_state=sim,
        compute=compute,
    )
    seconds = time.perf_counter() - t0
    teacher.to("cpu")
    sim.model.to("cpu")
    sim.model.eval()
    student = copy.deepcopy(teacher)  # the same module tree, given the trained float weights
    student.load_state_dict(sim.float_state(), strict=True)
    student.eval()
    result: dict[str, Any] = {
        "model": cfg.model,
        "scheme": cfg.scheme,
        "scope": {
            "patch_embed": cfg.patch_embed,
            "matmuls": cfg.matmuls,
            "float_layers": list(cfg.float_layers),
        },
        "data": images.description,
        "settings": s.model_dump(mode="json"),
        "history": fitted.history,
        "ranges_frozen_from_epoch": frozen_from + 1,
        "seconds_this_run": round(seconds, 1),
        **fitted.stats,
        "simulated_sqnr_db": {
            "where": f"simulated:edgevit.quant ({scheme.tag}), {len(calibration)} calibration images",
            "before": round(before, 2),
            "after": round(simulated_sqnr(student, teacher, scheme, scope, calibration), 2),
            "after_with_trained_ranges": round(
                outputs_sqnr_db(_run(teacher), _run(sim.model), calibration, BATCH), 2
            ),
            "float_after_vs_before": round(
                outputs_sqnr_db(_run(teacher), _run(student), calibration, BATCH), 2
            ),
        },
        "ranges": _range_report(sim, student, scope, calibration),
    }
    if world.main:
        export_onnx(student, config.input_size, out_dir / "model.onnx")
        atomic_write_json(out_dir / "ranges.json", sim.state_dict())
    return finish(student, config, out_dir, LOG_FILE, result)


def run_qat(cfg: QatConfig, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Train in this process, or in ``settings.nproc`` processes under torchrun."""
    if cfg.settings.nproc == 1:
        return qat(cfg, out_dir, progress)
    return distributed.run_stage_under_torchrun(
        "qat", cfg.model_dump(mode="json"), out_dir, cfg.settings.nproc, LOG_FILE, progress
    )
