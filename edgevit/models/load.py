"""Create and load models: ViT-Plus or timm names, safetensors or weights-only state dicts."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgevit.errors import ModelLoadError
from edgevit.fileio import sha256_file
from edgevit.models.config import ModelConfig
from edgevit.models.rotation import attach

if TYPE_CHECKING:
    from edgevit.check.bundle import Inputs

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    """A model in eval mode with the config that describes it and where it came from."""

    model: nn.Module
    config: ModelConfig
    checkpoint: Path | None
    sha256: str | None


def create(name: str, **kwargs: Any) -> nn.Module:
    """Create a model by ViT-Plus or timm name (random weights)."""
    import timm  # the ViT-Plus names are registered in timm by edgevit.models' __init__

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5] if "_" in name else []
        hint = f"did you mean one of {close}?" if close else "run `edgevit models` to list ViT-Plus names"
        raise ModelLoadError(f"unknown model name {name!r}", hint)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"cannot build {name} with {kwargs}: {exc}", "check the model options") from None
    _check_patch_grid(name, model)
    return model


def _check_patch_grid(name: str, model: nn.Module) -> None:
    """Refuse an input size the patches do not tile: the patch embedding would drop the border."""
    embed = getattr(model, "patch_embed", None)
    size, patch = getattr(embed, "img_size", None), getattr(embed, "patch_size", None)
    if not (isinstance(size, tuple | list) and isinstance(patch, tuple | list)):
        return
    if any(s % p for s, p in zip(size, patch, strict=False)):
        fits = [max(p, s // p * p) for s, p in zip(size, patch, strict=False)]
        raise ModelLoadError(
            f"input size {tuple(size)} is not a multiple of {name}'s patch size {tuple(patch)}",
            f"set model.input_size to a multiple of it, e.g. {fits[0] if len(set(fits)) == 1 else fits}",
        )


def config_for(name: str, model: nn.Module, **fields: Any) -> ModelConfig:
    """A ModelConfig for a freshly created model, from timm's pretrained_cfg plus overrides."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    classes = getattr(model, "num_classes", None)
    values: dict[str, Any] = {
        "architecture": name,
        "num_classes": int(cfg.get("num_classes", 1000) if classes is None else classes),
        "input_size": _input_size(model, cfg),
        "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }
    values.update(fields)
    return ModelConfig(**values)


def _input_size(model: nn.Module, cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) the model was built for: its patch embedding's size (``img_size`` given at
    creation), else its pretrained config's."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (3, int(size[0]), int(size[1]))
    return tuple(cfg.get("input_size", (3, 224, 224)))  # type: ignore[return-value]


PREPROCESSING = frozenset({"mean", "std", "interpolation", "crop_pct"})


def create_configured(
    name: str,
    num_classes: int,
    class_names: list[str] | None,
    preprocessing: dict[str, Any],
    model_kwargs: dict[str, Any],
) -> tuple[nn.Module, ModelConfig]:
    """A new model (random weights) and its config, with the given input preprocessing.

    ``preprocessing`` holds the ``PREPROCESSING`` fields (e.g. a teacher's, or a training config's).
    """
    model = create(name, num_classes=num_classes, **model_kwargs)
    fields = {k: v for k, v in preprocessing.items() if k in PREPROCESSING}
    config = config_for(name, model, class_names=class_names, model_kwargs=dict(model_kwargs), **fields)
    return model, config


def save(model: nn.Module, config: ModelConfig, directory: Path) -> Path:
    """Save ``model`` as safetensors with its config beside it; returns the weights path."""
    from safetensors.torch import save_file

    from edgevit.fileio import atomic_path

    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"architecture": config.architecture})
    config.save(directory / CONFIG_FILE)
    return weights


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"checkpoint {path} is corrupt or truncated ({exc})", "re-save or re-copy the checkpoint"
        ) from None


def _refusal(exc: Exception) -> str:
    """PyTorch's weights-only refusal in one line: the object it would not load, when it names one
    (its paragraphs on loading with weights_only=False are advice we do not give)."""
    text = " ".join(str(exc).split())
    for pattern in (r"Unsupported global: GLOBAL [\w.]+", r"WeightsUnpickler error: [^.]*"):
        found = re.search(pattern, text)
        if found:
            return f"PyTorch's weights-only loader refused it: {found.group(0)}"
    return text[:200]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"checkpoint {path} holds Python objects that are not loaded for safety ({_refusal(exc)})",
            "save a plain state dict (torch.save(model.state_dict(), ...)) or safetensors",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"checkpoint {path} is corrupt or truncated ({str(exc)[:160]})", "re-save or re-copy it"
        ) from None
    for key in ("state_dict", "model", "model_ema", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"checkpoint {path} is not a state dict of tensors", "save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _apply_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if isinstance(model, VisionTransformer) and "pos_embed" in state:
        state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    if shapes:
        problems.append(f"shape mismatch {'; '.join(shapes[:3])}")
    if problems:
        raise ModelLoadError(
            f"checkpoint {path} does not fit {name}: {'; '.join(problems)}",
            "name the architecture it was trained as (model.name) and its num_classes",
        )
    model.load_state_dict(state, strict=True)


def _headless(state: dict[str, torch.Tensor]) -> bool:
    """Whether a ViT state dict has no classifier (a backbone): blocks but no ``head.*``."""
    return any(k.startswith("blocks.") for k in state) and not any(k.startswith("head.") for k in state)


def has_config(checkpoint: str | Path) -> bool:
    """Whether a checkpoint (file or directory) has a config.json that names its architecture."""
    path = Path(checkpoint).expanduser()
    try:
        config = _locate(path)[1]
    except ModelLoadError:
        return False
    return config is not None and config.is_file()


def _locate(checkpoint: Path) -> tuple[Path, Path | None]:
    """Return (weights file, config file or None) for a checkpoint file or directory."""
    if checkpoint.is_dir():
        weights = checkpoint / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelLoadError(
                f"checkpoint directory {checkpoint} has no {WEIGHTS_FILE}", "point at the weights file"
            )
        return weights, checkpoint / CONFIG_FILE
    if not checkpoint.is_file():
        raise ModelLoadError(f"checkpoint {checkpoint} does not exist", "check the path (model.checkpoint)")
    if checkpoint.suffix == ".safetensors":
        for candidate in (checkpoint.with_suffix(".json"), checkpoint.parent / CONFIG_FILE):
            if candidate.is_file():
                return checkpoint, candidate
        return checkpoint, None
    if checkpoint.suffix in _STATE_DICT_SUFFIXES:
        return checkpoint, None
    raise ModelLoadError(
        f"checkpoint {checkpoint} has an unknown format ({checkpoint.suffix or 'no suffix'})",
        "use .safetensors (with config.json beside it) or a state dict (.pth/.pt/.bin)",
    )


def load(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a model for inference.

    Args:
        name: ViT-Plus or timm model name; optional when the checkpoint's config names it.
        checkpoint: a directory with model.safetensors + config.json, a
            .safetensors file, or a timm-style state dict (loaded with ``weights_only=True``).
        num_classes: classifier size when the checkpoint has no config (default: from the head).
        **model_kwargs: extra constructor arguments (e.g. ``ms_scales=(1,)``).

    Returns:
        The model in eval mode with its ModelConfig and the checkpoint's sha256.
    """
    if checkpoint is None:
        if name is None:
            raise ModelLoadError("no model given", "set model.name and/or model.checkpoint")
        model = create(name, **({"num_classes": num_classes} if num_classes else {}), **model_kwargs)
        return LoadedModel(model.eval(), config_for(name, model, model_kwargs=model_kwargs), None, None)

    if isinstance(checkpoint, str) and checkpoint.startswith("builtin:"):
        # builtin models are trained on first use, which sits above this module (edgevit.builtin)
        raise ModelLoadError(
            f"checkpoint {checkpoint} is a builtin model",
            "load it with edgevit.load_model, which trains it once",
        )
    weights, config_path = _locate(Path(checkpoint).expanduser())
    if config_path is not None and config_path.is_file():
        config = ModelConfig.read(config_path)
        if name is not None and name != config.architecture:
            raise ModelLoadError(
                f"checkpoint {weights} is a {config.architecture}, not a {name}",
                f"set model.name to {config.architecture} or leave it out",
            )
        state = _read_safetensors(weights)
        kwargs = {**config.model_kwargs, **model_kwargs}
        model = attach(create(config.architecture, num_classes=config.num_classes, **kwargs), config.rotation)
        if model_kwargs:  # e.g. another img_size: the config describes the model as built
            config = config.model_copy(
                update={
                    "model_kwargs": kwargs,
                    "input_size": _input_size(model, {"input_size": config.input_size}),
                }
            )
    else:
        if name is None:
            raise ModelLoadError(
                f"checkpoint {weights} has no config.json beside it", "set model.name to its architecture"
            )
        state = _read_safetensors(weights) if weights.suffix == ".safetensors" else _read_state_dict(weights)
        if num_classes is None and "head.weight" in state:
            num_classes = int(state["head.weight"].shape[0])
        elif num_classes is None and "task" not in model_kwargs and _headless(state):
            num_classes = 0  # a backbone as DINOv2, CLIP and MAE ship: features, no classifier
        model = create(name, **({"num_classes": num_classes} if num_classes else {}), **model_kwargs)
        config = config_for(name, model, model_kwargs=model_kwargs)
    _apply_state(model, state, weights, config.architecture)
    return LoadedModel(model.eval(), config, weights, sha256_file(weights))


def logits_of(model: nn.Module, x: Inputs, batch: int) -> np.ndarray:
    """The float model's logits for preprocessed images ``x`` (N x C x H x W float32), ``batch`` at a time."""
    if not len(x):
        return np.zeros((0, 0), np.float32)
    device = next(model.parameters()).device
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu().numpy()
                for i in range(0, len(x), batch)
            ]
        )
