"""What can be pruned in a ViT-Plus and what each unit costs (MACs or parameters)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from edgevit.errors import ModelLoadError
from edgevit.models.vit_plus import MultiScaleAttention, VisionTransformerPlus

Measure = Literal["macs", "params"]


def as_vit_plus(model: nn.Module) -> VisionTransformerPlus:
    """``model`` if it is a prunable ViT-Plus, else a clear error."""
    if not isinstance(model, VisionTransformerPlus):
        raise ModelLoadError(
            f"pruning needs a ViT-Plus model, got {type(model).__name__}",
            "load the checkpoint as a vit_plus_* architecture (timm ViT weights load into ViT-Plus)",
        )
    blocks(model)  # every block must be prunable
    return model


@dataclass(frozen=True)
class BlockView:
    """Typed handles on the prunable parts of one transformer block."""

    attn: MultiScaleAttention
    mlp: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear

    @property
    def heads(self) -> int:
        """Number of attention heads."""
        return self.attn.num_heads

    @property
    def width(self) -> int:
        """MLP hidden width."""
        return self.fc1.out_features


def blocks(model: VisionTransformerPlus) -> list[BlockView]:
    """A typed view of every block of ``model`` (in order)."""
    views: list[BlockView] = []
    for blk in model.blocks:
        attn, mlp = blk.attn, blk.mlp
        assert isinstance(mlp, nn.Module)
        fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        if not (
            isinstance(attn, MultiScaleAttention)
            and isinstance(fc1, nn.Linear)
            and isinstance(fc2, nn.Linear)
        ):
            raise ModelLoadError(
                f"block {len(views)} is not a standard ViT block (attention + fc1/fc2 MLP)",
                "pruning supports ViT-Plus blocks with a plain Mlp (no GLU/SwiGLU)",
            )
        views.append(BlockView(attn, mlp, fc1, fc2))
    return views


def head_scales(attn: MultiScaleAttention) -> list[int]:
    """The key/value pooling factor of each head of ``attn``, in head order."""
    scales = [0] * attn.num_heads
    for start, count, scale in attn.groups:
        scales[start : start + count] = [scale] * count
    return scales


@dataclass(frozen=True)
class Geometry:
    """Token counts and widths that set the cost of one head and one MLP neuron."""

    dim: int
    head_dim: int
    tokens: int
    grid: tuple[int, int]
    prefix: int
    qkv_bias: bool
    mlp_bias: bool

    @classmethod
    def of(cls, model: VisionTransformerPlus) -> Geometry:
        """Read the geometry off a model."""
        first = blocks(model)[0]
        attn = first.attn
        gh, gw = attn.grid_size
        return cls(
            dim=int(model.embed_dim),
            head_dim=attn.head_dim,
            tokens=attn.num_prefix_tokens + gh * gw,
            grid=(gh, gw),
            prefix=attn.num_prefix_tokens,
            qkv_bias=attn.qkv.bias is not None,
            mlp_bias=first.fc1.bias is not None,
        )

    def keys(self, scale: int) -> int:
        """Key/value tokens a head at pooling factor ``scale`` attends to."""
        return self.prefix + math.ceil(self.grid[0] / scale) * math.ceil(self.grid[1] / scale)

    def head_cost(self, scale: int, measure: Measure) -> int:
        """MACs (batch 1) or parameters of one head: its q/k/v rows, proj columns, attention."""
        d, hd, n = self.dim, self.head_dim, self.tokens
        if measure == "params":
            return 4 * d * hd + (3 * hd if self.qkv_bias else 0)
        return 4 * n * d * hd + 2 * n * self.keys(scale) * hd

    def neuron_cost(self, measure: Measure) -> int:
        """MACs (batch 1) or parameters of one MLP hidden unit."""
        if measure == "params":
            return 2 * self.dim + (1 if self.mlp_bias else 0)
        return 2 * self.tokens * self.dim
