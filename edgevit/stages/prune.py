"""The prune stage: score a ViT-Plus on calibration images, cut it to the budget, save it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgevit.data import ImageSource
from edgevit.data.stream import Images
from edgevit.fileio import atomic_write_json
from edgevit.models.config import ModelConfig
from edgevit.models.load import save
from edgevit.pruning import prune
from edgevit.recipe.schema import PruneStage

SUMMARY_FILE = "prune.json"


def run_prune(
    model: nn.Module,
    config: ModelConfig,
    stage: PruneStage,
    calibration: ImageSource,
    out_dir: Path,
    where: str = "stages[prune]",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prune a copy of ``model`` per ``stage``; write model.safetensors, config.json and prune.json."""
    import copy

    images = Images(calibration, config)  # streamed past the cache limit
    result = prune(copy.deepcopy(model), config, stage, images, where, log)
    save(result.model, result.config, out_dir)
    summary = {**result.summary, "importance_data": calibration.description}
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary
