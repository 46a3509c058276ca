"""Shared fixtures: a tiny random ViT-Plus checkpoint, its ONNX export, a small image folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgevit.models.load import config_for, create, save

REPO = Path(__file__).resolve().parent.parent
TINY = "vit_plus_tiny_patch8_32"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-block ViT-Plus (random weights, 10 classes) saved as safetensors + config.json."""
    torch.manual_seed(0)
    model = create(TINY, num_classes=10, depth=1)
    cfg = config_for(
        TINY,
        model,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation="bilinear",
        crop_pct=1.0,
        class_names=[str(i) for i in range(10)],
        model_kwargs={"depth": 1},
    )
    out = tmp_path_factory.mktemp("tiny")
    save(model, cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to ONNX."""
    from edgevit.models.load import load
    from edgevit.stages.export import export_onnx

    loaded = load(checkpoint=tiny_checkpoint)
    return export_onnx(loaded.model, loaded.config.input_size, tmp_path_factory.mktemp("onnx") / "m.onnx")


def write_image_folder(root: Path, classes: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """Write ``count`` random PNGs per class into ``root/<class>/`` (class = brightness band)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            level = 40 + 60 * ci
            img = np.clip(rng.normal(level, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the edgevit CLI in a subprocess (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "edgevit.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
        timeout=1800,
    )


def tiny_recipe(
    checkpoint: Path,
    targets: list[dict[str, Any]],
    *,
    name: str = "tiny",
    calibration: int = 16,
    evaluation: int = 24,
    quantize: dict[str, Any] | None = None,
    check: dict[str, Any] | None = None,
    gates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe for a quick build of ``checkpoint`` on a few digits images (one quantize stage)."""
    return {
        "name": name,
        "model": {"checkpoint": str(checkpoint)},
        "data": {
            "calibration": {"source": "digits", "split": "train", "count": calibration},
            "evaluation": {"source": "digits", "split": "test", "count": evaluation},
        },
        "stages": [{"stage": "quantize", **(quantize or {})}],
        "targets": targets,
        "check": check or {"runs": 5, "warmup": 1},
        "gates": gates or {"max_top1_drop": 100},
    }


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    """Write ``recipe`` as YAML to ``path``; returns the path."""
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return path
