"""Train or fine-tune a classifier on a dataset: seeded, resumable, checkpoint + config out."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgevit import distributed
from edgevit.data import DataSpec, load_data
from edgevit.data.transforms import preprocess
from edgevit.errors import EdgeVitError
from edgevit.fileio import atomic_path, atomic_write_json, ensure_dir
from edgevit.models.config import ModelConfig
from edgevit.models.load import create_configured, load, save

STATE_FILE = "train_state.pt"
LOG_FILE = "train.json"


class TrainConfig(BaseModel):
    """Everything that determines a training run (its hash names the builtin cache entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = "vit_plus_tiny_patch8_32"
    init_checkpoint: str | None = Field(default=None, description="fine-tune from this checkpoint")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data: str = "digits"
    epochs: int = Field(default=40, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: int = Field(default=3, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    shift_pixels: int = Field(default=2, ge=0, description="random translation augmentation")
    seed: int = 0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    crop_pct: float = Field(default=1.0, gt=0, le=1)


def _shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pixels`` (edge-replicated padding, then a random crop)."""
    if pixels == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    offs = torch.randint(0, 2 * pixels + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offs.tolist())])


def evaluate_top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` on preprocessed inputs."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return 100.0 * correct / max(1, len(x))


def _build(cfg: TrainConfig, class_names: list[str]) -> tuple[nn.Module, ModelConfig]:
    n = len(class_names)
    if cfg.init_checkpoint:
        loaded = load(cfg.model, cfg.init_checkpoint, **cfg.model_kwargs)
        model = loaded.model
        if getattr(model, "num_classes", n) != n:
            model.reset_classifier(n)  # type: ignore[operator]
        mcfg = loaded.config.model_copy(update={"num_classes": n, "class_names": class_names})
        return model, mcfg
    return create_configured(cfg.model, n, class_names, cfg.model_dump(), cfg.model_kwargs)


@dataclass(frozen=True)
class Optim:
    """Optimisation settings shared by training and distillation."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    shift_pixels: int
    seed: int


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Stateful(Protocol):
    """State beside the model's that a resumed run needs (quantization-aware training's ranges)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optim: Optim,
    loss_fn: LossFn,
    out_dir: Path,
    key: str,
    desc: str,
    progress: bool = True,
    after_epoch: Callable[[nn.Module], dict[str, float]] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    extra_state: Stateful | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place with AdamW and a warm-up + cosine schedule; returns the history.

    After every epoch the state goes to ``out_dir/train_state.pt`` (by rank 0), so a run that
    stops resumes where it left off when called again with the same ``key``. Under torchrun each
    process takes its slice of every global batch and DistributedDataParallel averages gradients.
    ``before_epoch(epoch)`` runs at the start of each epoch; ``extra_state`` is saved and restored
    with the model's.
    """
    from tqdm import tqdm

    world = distributed.init()
    torch.manual_seed(optim.seed)
    net: nn.Module = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=optim.lr, weight_decay=optim.weight_decay)
    steps_per_epoch = math.ceil(len(x) / optim.batch_size)
    total, warm = optim.epochs * steps_per_epoch, optim.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history: list[dict[str, float]] = []
    start_epoch = 0
    state_path = out_dir / STATE_FILE
    distributed.barrier()
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config") != key:
            raise EdgeVitError(
                f"{out_dir} holds a training run with a different config", "use another output directory"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        if extra_state is not None:
            extra_state.load_state_dict(state["extra"])

    bar = tqdm(
        range(start_epoch, optim.epochs),
        desc=desc,
        disable=not (progress and world.main),
        initial=start_epoch,
        total=optim.epochs,
        unit="epoch",
    )
    for epoch in bar:
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        gen = torch.Generator().manual_seed(optim.seed * 100_003 + epoch)
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for i in range(0, len(order), optim.batch_size):
            idx = order[i : i + optim.batch_size]
            xb = _shift(x[idx], optim.shift_pixels, gen)[world.rank :: world.size]
            loss = loss_fn(net, xb, y[idx][world.rank :: world.size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        mean_loss = torch.tensor(float(np.mean(losses)))
        if world.size > 1:
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world.size
        entry = {"epoch": epoch + 1, "loss": float(mean_loss)}
        entry.update(after_epoch(model) if after_epoch else {})
        history.append(entry)
        bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k != "epoch"})
        if world.main:
            state = {
                "config": key,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": json.dumps(history),
                "extra": extra_state.state_dict() if extra_state is not None else {},
            }
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
        distributed.barrier()
    model.eval()
    return history


def train(cfg: TrainConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir`` (model.safetensors, config.json, train.json).

    A run interrupted after an epoch resumes from ``train_state.pt`` when called again with
    the same config; a different config in the same directory is an error. Under torchrun the
    processes share each batch (see ``fit``) and rank 0 writes the files.
    """
    world = distributed.init()
    ensure_dir(out_dir, "output directory")
    torch.manual_seed(cfg.seed)  # the model's initial weights
    train_raw = load_data(DataSpec(source=cfg.data, split="train"))
    val_raw = load_data(DataSpec(source=cfg.data, split="val"), train_raw.class_names)
    model, mcfg = _build(cfg, train_raw.class_names)
    x_tr = torch.from_numpy(preprocess(train_raw, mcfg))
    y_tr = torch.from_numpy(train_raw.labels)
    x_va, y_va = torch.from_numpy(preprocess(val_raw, mcfg)), torch.from_numpy(val_raw.labels)
    optim = Optim(
        cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.shift_pixels, cfg.seed
    )

    def loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(xb), yb, label_smoothing=cfg.label_smoothing)

    t0 = time.perf_counter()
    history = fit(
        model,
        x_tr,
        y_tr,
        optim,
        loss_fn,
        out_dir,
        cfg.model_dump_json(),
        f"train {cfg.model}",
        progress,
        lambda m: {"val_top1": evaluate_top1(m, x_va, y_va)},
    )
    result: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "history": history,
        "val_top1": history[-1]["val_top1"] if history else None,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        "processes": world.size,
    }
    try:
        test_raw = load_data(DataSpec(source=cfg.data, split="test"), train_raw.class_names)
        result["test_top1"] = evaluate_top1(
            model, torch.from_numpy(preprocess(test_raw, mcfg)), torch.from_numpy(test_raw.labels)
        )
    except EdgeVitError:
        result["test_top1"] = None  # a folder source may have no test split
    return finish(model, mcfg, out_dir, LOG_FILE, result)


def finish(
    model: nn.Module, config: ModelConfig, out_dir: Path, log_name: str, result: dict[str, Any]
) -> dict[str, Any]:
    """Rank 0 saves the trained model and its log and drops the resume state; all ranks wait."""
    if distributed.init().main:
        save(model, config, out_dir)
        atomic_write_json(out_dir / log_name, result)
        (out_dir / STATE_FILE).unlink(missing_ok=True)
    distributed.barrier()
    return result
