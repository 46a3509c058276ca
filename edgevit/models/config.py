"""The JSON config stored beside every checkpoint: architecture, input and preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgevit.errors import ModelLoadError
from edgevit.fileio import atomic_write_json
from edgevit.models.rotation import RotationSpec

CONFIG_VERSION = 1


class ModelConfig(BaseModel):
    """What a checkpoint is: enough to rebuild the model and preprocess its inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    format_version: int = CONFIG_VERSION
    architecture: str
    num_classes: int = Field(ge=0, description="0: headless, the outputs are features")
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic"
    crop_pct: float = Field(default=1.0, gt=0, le=1)
    class_names: list[str] | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    rotation: RotationSpec | None = None  # modules a rotated checkpoint adds (edgevit.quant.rotate)

    @property
    def task(self) -> str:
        """What the model predicts: classification, segmentation or depth (a ViT-Plus ``task``), or
        embedding (a headless model's features)."""
        if "task" in self.model_kwargs:
            return str(self.model_kwargs["task"])
        return "embedding" if self.num_classes == 0 else "classification"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.input_size[1], self.input_size[2]

    def save(self, path: Path) -> None:
        """Write the config atomically as JSON."""
        atomic_write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        """Read and validate a config file, naming the file and field on error."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(
                f"model config {path} does not exist",
                "keep the config.json written beside the checkpoint, or pass model.name",
            ) from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model config {path} is not valid JSON ({exc})", "re-save it") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(root)"
            raise ModelLoadError(
                f"model config {path}: {where}: {err['msg']}", "fix the field or re-save the checkpoint"
            ) from None
