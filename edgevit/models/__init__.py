"""Models: the ViT-Plus family (registered in timm when this package is imported, before any
submodule is used) and checkpoint loading."""

from edgevit.models.config import ModelConfig
from edgevit.models.dense import DenseVisionTransformerPlus
from edgevit.models.detect import DetectionVisionTransformerPlus
from edgevit.models.load import LoadedModel, create, load, save
from edgevit.models.vit_plus import VisionTransformerPlus

__all__ = [
    "DenseVisionTransformerPlus",
    "DetectionVisionTransformerPlus",
    "LoadedModel",
    "ModelConfig",
    "VisionTransformerPlus",
    "create",
    "load",
    "save",
]
