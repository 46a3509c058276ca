"""Models: the ViT-Plus family (registered in timm on import) and checkpoint loading."""

from edgevit.models.config import ModelConfig
from edgevit.models.load import LoadedModel, create, load, save
from edgevit.models.vit_plus import VisionTransformerPlus

__all__ = ["LoadedModel", "ModelConfig", "VisionTransformerPlus", "create", "load", "save"]
