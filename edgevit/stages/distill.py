"""The distill stage: train a student to match the float reference (teacher) and the labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from edgevit import distributed
from edgevit.compute import resolve
from edgevit.data import DataSpec, open_data
from edgevit.data.source import require_task, verify
from edgevit.data.stream import Images
from edgevit.errors import EdgeVitError, ModelLoadError
from edgevit.fileio import ensure_dir
from edgevit.models.config import ModelConfig
from edgevit.models.load import create, create_configured, load
from edgevit.models.vit_plus import VisionTransformerPlus, add_distill_token
from edgevit.recipe.schema import RUN_PLACEMENT, DistillStage, QatStage
from edgevit.tasks import TASKS
from edgevit.train import Optim, finish, fit

LOG_FILE = "distill.json"


class DistillConfig(BaseModel):
    """One distillation run: teacher and student checkpoints, training data, settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    teacher: str
    student: str  # a checkpoint (file or directory) or a model name trained from scratch
    data: DataSpec
    base_dir: str | None = None
    settings: DistillStage


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    s: DistillStage | QatStage,
    task: str = "classification",
) -> torch.Tensor:
    """alpha * the task's distillation loss (classification: T^2 * KL(teacher || student at
    temperature T); segmentation: the same per pixel; depth: relative L1 to the teacher's depth)
    + (1 - alpha) * the task's loss against ground truth (labels or maps)."""
    objective = TASKS.get(task)
    soft = objective.distill_loss(student, teacher, s.temperature)
    if s.alpha == 1.0:  # no ground-truth term (0 x a depth loss over no valid pixel would be NaN)
        return soft
    hard = objective.loss(student, labels, label_smoothing=s.label_smoothing)
    return s.alpha * soft + (1 - s.alpha) * hard


# what a student named by architecture takes over from a dense teacher: its task and head
_HEAD_KWARGS = ("task", "dense_head", "decoder_dim")


def _student(cfg: DistillConfig, teacher: ModelConfig) -> tuple[nn.Module, ModelConfig]:
    path = Path(cfg.student).expanduser()
    dense = teacher.task != "classification"
    if dense and cfg.settings.distill_token:
        raise EdgeVitError(
            f"distill_token is for classification, and the teacher is a {teacher.task} model",
            "set distill_token: false (a dense student learns the teacher's maps through its own head)",
        )
    extra: dict[str, Any] = {"distill_token": True} if cfg.settings.distill_token else {}
    if dense and not path.exists():
        extra.update({k: v for k, v in teacher.model_kwargs.items() if k in _HEAD_KWARGS})
    if path.exists():
        loaded = load(checkpoint=path)
        model, config = loaded.model, loaded.config
        if extra and not config.model_kwargs.get("distill_token"):
            # the token starts as a copy of the class token, its head as a copy of the class head
            config = config.model_copy(update={"model_kwargs": {**config.model_kwargs, **extra}})
            state = add_distill_token(model.state_dict())
            model = create(config.architecture, num_classes=config.num_classes, **config.model_kwargs)
            model.load_state_dict(state, strict=True)
    else:
        torch.manual_seed(cfg.settings.seed)
        model, config = create_configured(
            cfg.student, teacher.num_classes, teacher.class_names, teacher.model_dump(), extra
        )
    if config.task != teacher.task:
        raise ModelLoadError(
            f"student {cfg.student} is a {config.task} model, the teacher a {teacher.task} model",
            "pick a student for the teacher's task",
        )
    if config.input_size != teacher.input_size or config.num_classes != teacher.num_classes:
        raise ModelLoadError(
            f"student {cfg.student} takes {config.input_size} and predicts {config.num_classes} classes; the "
            f"teacher takes {teacher.input_size} and predicts {teacher.num_classes}",
            "pick a student with the teacher's input size and classes",
        )
    return model, config


def _checkpointing(model: nn.Module, enable: bool) -> None:
    """Turn timm's grad checkpointing of the blocks on or off."""
    switch = getattr(model, "set_grad_checkpointing", None)
    if switch is None:
        if enable:
            raise EdgeVitError(
                f"{type(model).__name__} has no activation checkpointing",
                "set activation_checkpointing: false (timm ViT/DeiT and ViT-Plus students have it)",
            )
        return
    switch(enable)


def distill(cfg: DistillConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Distill into ``out_dir`` (model.safetensors, config.json, distill.json); resumable, seeded.

    Run it once per process under torchrun to train with DistributedDataParallel.
    """
    s = cfg.settings
    compute = resolve(s.device, s.precision)
    distributed.init(compute.distributed_backend)
    ensure_dir(out_dir, "output directory")
    teacher = load(checkpoint=Path(cfg.teacher))
    model, config = _student(cfg, teacher.config)
    base = Path(cfg.base_dir) if cfg.base_dir else None
    task = teacher.config.task
    source = require_task(open_data(cfg.data, teacher.config.class_names, base, task), task, "data.train")
    verify(source, cfg.data)
    images = Images(source, teacher.config, pin_memory=compute.cuda)
    teacher_model = teacher.model.eval().to(compute.device)
    model.to(compute.device)
    for p in teacher_model.parameters():
        p.requires_grad_(False)

    def loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher_model(xb)
        out = net(xb)
        if isinstance(out, tuple):  # distillation token: class head learns labels, token head the teacher
            cls_out, dist_out = out
            return (1 - s.alpha) * F.cross_entropy(
                cls_out, yb, label_smoothing=s.label_smoothing
            ) + s.alpha * kd_loss(dist_out, target, yb, s.model_copy(update={"alpha": 1.0}))
        return kd_loss(out, target, yb, s, task)

    optim = Optim(s.epochs, s.batch_size, s.lr, s.weight_decay, s.warmup_epochs, s.shift_pixels, s.seed)
    vit = model if isinstance(model, VisionTransformerPlus) else None
    if vit is not None:
        vit.set_distilled_training(True)
    _checkpointing(model, s.activation_checkpointing)
    t0 = time.perf_counter()
    fitted = fit(
        model,
        images,
        optim,
        loss_fn,
        out_dir,
        cfg.model_dump_json(exclude={"settings": RUN_PLACEMENT}),  # resumable on any device or world
        f"distill {config.architecture}",
        progress,
        compute=compute,
    )
    if vit is not None:
        vit.set_distilled_training(False)
    _checkpointing(model, False)
    result: dict[str, Any] = {
        "teacher": cfg.teacher,
        "student": cfg.student,
        "data": images.description,
        "settings": s.model_dump(mode="json"),
        "history": fitted.history,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        **fitted.stats,
    }
    return finish(model, config, out_dir, LOG_FILE, result)


def run_distill(cfg: DistillConfig, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Distill in this process, or in ``settings.nproc`` processes under torchrun."""
    if cfg.settings.nproc == 1:
        return distill(cfg, out_dir, progress)
    return distributed.run_stage_under_torchrun(
        "distill", cfg.model_dump(mode="json"), out_dir, cfg.settings.nproc, LOG_FILE, progress
    )
