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
from edgevit.compute import Compute, peak_memory, resolve
from edgevit.data import DataSpec, open_data
from edgevit.data.source import require_task
from edgevit.data.stream import Images
from edgevit.errors import EdgeVitError
from edgevit.fileio import atomic_path, atomic_write_json, ensure_dir
from edgevit.models.config import ModelConfig
from edgevit.models.load import create_configured, has_config, load, save

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
    linear_probe: bool = Field(
        default=False, description="train only a new classifier on the frozen features of init_checkpoint"
    )


def _shift(x: torch.Tensor, offsets: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate each image by its (dy, dx) in ``offsets`` (0..2*pixels): edge-replicated padding,
    then a crop."""
    if pixels == 0:
        return x
    _, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    return torch.stack(
        [padded[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offsets.tolist())]
    )


def _shift_boxes(
    boxes: torch.Tensor, offsets: torch.Tensor, pixels: int, size: tuple[int, int]
) -> torch.Tensor:
    """Padded boxes (N x B x 5, class -1 for none) moved with their images by :func:`_shift`
    (by ``pixels`` - offset), clipped to the ``size`` (h, w) image; a box left under a pixel wide or
    high becomes padding."""
    out = boxes.clone()
    moved = (pixels - offsets).to(out.dtype)  # N x 2: rows, columns
    h, w = size
    valid = out[..., 4] >= 0
    out[..., 0:4:2] = (out[..., 0:4:2] + moved[:, 1, None, None]).clamp(0, w)
    out[..., 1:4:2] = (out[..., 1:4:2] + moved[:, 0, None, None]).clamp(0, h)
    gone = (out[..., 2] - out[..., 0] < 1) | (out[..., 3] - out[..., 1] < 1)
    out[~valid | gone] = -1
    return out


def evaluate(model: nn.Module, data: Images, task: str, batch: int = 256) -> dict[str, float]:
    """The task's headline scores of ``model`` on ``data`` against its ground truth (top-1 for
    classification; mIoU and pixel accuracy; AbsRel, δ1 and RMSE), batch by batch."""
    if task == "classification":
        return {"top1": evaluate_top1(model, data, batch)}
    from edgevit.tasks import TASKS

    spec = TASKS.get(task)
    scorer = spec.scorer()
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for xb, yb in data.in_order(batch):
            out = model(xb.to(device)).float().cpu().numpy()
            scorer.add(out, yb.numpy(), out)
    scores = scorer.result()
    return {k: float(scores[k]) for k in spec.headline}


def evaluate_top1(model: nn.Module, data: Images, batch: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` on ``data`` (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for xb, yb in data.in_order(batch):
            correct += int((model(xb.to(device)).argmax(-1).cpu() == yb).sum())
    return 100.0 * correct / max(1, len(data))


def _build(cfg: TrainConfig, class_names: list[str]) -> tuple[nn.Module, ModelConfig]:
    n = len(class_names) or 1  # a depth model has one output channel and no classes
    if cfg.init_checkpoint:
        # a checkpoint's config names its architecture, unless the user named one
        name = cfg.model if "model" in cfg.model_fields_set or not has_config(cfg.init_checkpoint) else None
        loaded = load(name, cfg.init_checkpoint, **cfg.model_kwargs)
        model = loaded.model
        if getattr(model, "num_classes", n) != n or cfg.linear_probe:
            model.reset_classifier(n)  # type: ignore[operator]
        if cfg.linear_probe:  # the backbone's features stay as they are: only the new head learns
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("head."))
        mcfg = loaded.config.model_copy(update={"num_classes": n, "class_names": class_names})
        return model, mcfg
    if cfg.linear_probe:
        raise EdgeVitError("a linear probe trains on a model's features", "give --init, the model to probe")
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


@dataclass
class Fitted:
    """What :func:`fit` did: the per-epoch history and how it ran (device, precision, processes,
    images/s, peak memory, how the data was served)."""

    history: list[dict[str, float]]
    stats: dict[str, Any]


def fit(
    model: nn.Module,
    data: Images,
    optim: Optim,
    loss_fn: LossFn,
    out_dir: Path,
    key: str,
    desc: str,
    progress: bool = True,
    after_epoch: Callable[[nn.Module], dict[str, float]] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    extra_state: Stateful | None = None,
    compute: Compute | None = None,
) -> Fitted:
    """Train ``model`` in place with AdamW and a warm-up + cosine schedule on ``compute`` (the CPU
    in fp32 when not given; the caller has moved the model there).

    Every epoch draws a seeded permutation of ``data`` and walks it in global batches; under
    torchrun each process reads and trains on its slice of every global batch (the slices are
    disjoint, as with a DistributedSampler) and DistributedDataParallel averages gradients, so N
    processes follow one process's optimisation. After every epoch the state goes to
    ``out_dir/train_state.pt`` (by rank 0, from CPU tensors), so a run that stops resumes where it
    left off when called again with the same ``key``, on any device and any number of processes.
    ``before_epoch(epoch)`` runs at the start of each epoch; ``extra_state`` is saved and restored
    with the model's.
    """
    from tqdm import tqdm

    compute = compute or Compute(torch.device("cpu"), "fp32")
    world = distributed.init(compute.distributed_backend)
    torch.manual_seed(optim.seed)
    net: nn.Module = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[compute.device.index] if compute.cuda else None)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=optim.lr, weight_decay=optim.weight_decay)
    scaler = compute.scaler()
    n = len(data)
    steps_per_epoch = math.ceil(n / optim.batch_size)
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
        total=optim.epochs * n,
        initial=start_epoch * n,
        desc=desc,
        disable=not (progress and world.main),
        unit="img",
        unit_scale=True,
        smoothing=0.1,
    )
    seen, t0 = 0, time.perf_counter()
    for epoch in range(start_epoch, optim.epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        gen = torch.Generator().manual_seed(optim.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen)
        global_batches = [order[i : i + optim.batch_size] for i in range(0, n, optim.batch_size)]
        parts = [b[world.rank :: world.size].tolist() for b in global_batches]
        # A process whose part of a global batch is empty (the last batch smaller than the world)
        # still runs forward and backward, which DDP's all-reduce needs, on the batch's first image
        # at weight 0.
        mine = [part or b[:1].tolist() for part, b in zip(parts, global_batches, strict=True)]
        losses = []
        for batch, part, (xb, yb) in zip(global_batches, parts, data.batches(mine), strict=True):
            if optim.shift_pixels:  # drawn for the whole global batch: the same in every world size
                offsets = torch.randint(0, 2 * optim.shift_pixels + 1, (len(batch), 2), generator=gen)
                mine_offsets = offsets[world.rank :: world.size] if part else offsets[:1]
                xb = _shift(xb, mine_offsets, optim.shift_pixels)
                if data.source.task == "detection":  # boxes move with their images
                    yb = _shift_boxes(yb, mine_offsets, optim.shift_pixels, (xb.shape[-2], xb.shape[-1]))
                elif yb.ndim == 3:  # a dense task's maps move with their images
                    yb = _shift(yb[:, None].double(), mine_offsets, optim.shift_pixels)[:, 0].to(yb.dtype)
            xb = xb.to(compute.device, non_blocking=True)
            yb = yb.to(compute.device, non_blocking=True)
            # DDP averages the processes' gradients. Weighting each process's mean loss by its share
            # of the global batch makes that average the global batch's mean, as in one process,
            # also when the parts are uneven or one is empty.
            share = len(part) * world.size / len(batch)
            with compute.autocast():
                weighted = loss_fn(net, xb, yb) * share
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(weighted).backward()
                scaler.step(opt)
                scaler.update()
            else:
                weighted.backward()
                opt.step()
            sched.step()
            losses.append(weighted.item() / world.size)  # summed over processes: the global mean
            seen += len(batch)
            bar.update(len(batch))
        mean_loss = torch.tensor(float(np.sum(losses)) / len(global_batches), device=compute.device)
        if world.size > 1:
            torch.distributed.all_reduce(mean_loss)
        entry = {"epoch": epoch + 1, "loss": float(mean_loss)}
        entry.update(after_epoch(model) if after_epoch else {})
        history.append(entry)
        bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items()})
        if world.main:
            state = {
                "config": key,
                "epoch": epoch + 1,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": _to_cpu(opt.state_dict()),
                "scheduler": sched.state_dict(),
                "history": json.dumps(history),
                "extra": extra_state.state_dict() if extra_state is not None else {},
            }
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
        distributed.barrier()
    bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    stats: dict[str, Any] = {
        **compute.describe(),
        "processes": world.size,
        "images_per_second": round(seen / seconds, 1) if seen else None,
        "data": data.mode,
        **peak_memory(compute),
    }
    return Fitted(history, stats)


def _to_cpu(value: Any) -> Any:
    """``value`` (an optimizer's state dict) with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def train(
    cfg: TrainConfig, out_dir: Path, progress: bool = True, compute: Compute | None = None
) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir`` (model.safetensors, config.json, train.json) on
    ``compute`` (``edgevit.compute.resolve``: a GPU when there is one).

    A run interrupted after an epoch resumes from ``train_state.pt`` when called again with
    the same config; a different config in the same directory is an error. Under torchrun the
    processes share each batch (see ``fit``) and rank 0 writes the files.
    """
    compute = compute or resolve()
    distributed.init(compute.distributed_backend)
    ensure_dir(out_dir, "output directory")
    torch.manual_seed(cfg.seed)  # the model's initial weights
    task = str(cfg.model_kwargs.get("task", "classification"))
    train_src = require_task(open_data(DataSpec(source=cfg.data, split="train"), task=task), task, "data")
    model, mcfg = _build(cfg, train_src.class_names)
    model.to(compute.device)
    images = Images(train_src, mcfg, pin_memory=compute.cuda)
    val = Images(open_data(DataSpec(source=cfg.data, split="val"), train_src.class_names, task=task), mcfg)
    optim = Optim(
        cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.shift_pixels, cfg.seed
    )
    from edgevit.tasks import TASKS

    objective = TASKS.get(task)

    def loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return objective.loss(net(xb), yb, label_smoothing=cfg.label_smoothing)

    t0 = time.perf_counter()
    fitted = fit(
        model,
        images,
        optim,
        loss_fn,
        out_dir,
        cfg.model_dump_json(),
        f"{'probe' if cfg.linear_probe else 'train'} {mcfg.architecture}",
        progress,
        lambda m: {f"val_{k}": v for k, v in evaluate(m, val, task).items()},
        compute=compute,
    )
    last = fitted.history[-1] if fitted.history else {}
    result: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "history": fitted.history,
        **{f"val_{k}": last.get(f"val_{k}") for k in objective.headline},
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        **fitted.stats,
    }
    try:
        test = Images(
            open_data(DataSpec(source=cfg.data, split="test"), train_src.class_names, task=task), mcfg
        )
        result.update({f"test_{k}": v for k, v in evaluate(model, test, task).items()})
    except EdgeVitError:
        result.update(
            {f"test_{k}": None for k in objective.headline}
        )  # a folder source may have no test split
    return finish(model, mcfg, out_dir, LOG_FILE, result)


def finish(
    model: nn.Module, config: ModelConfig, out_dir: Path, log_name: str, result: dict[str, Any]
) -> dict[str, Any]:
    """Rank 0 saves the trained model and its log and drops the resume state; all ranks wait."""
    model.to("cpu")  # checkpoints hold CPU tensors: they load on any device
    if distributed.init().main:
        save(model, config, out_dir)
        atomic_write_json(out_dir / log_name, result)
        (out_dir / STATE_FILE).unlink(missing_ok=True)
    distributed.barrier()
    return result
