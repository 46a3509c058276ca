"""Dense heads on ViT-Plus: semantic segmentation and depth from the patch-token grid.

A head takes the token sequences of a few blocks (the last one after the backbone's final norm),
drops the prefix tokens, lays the patch tokens out on their grid (N x D x gh x gw) and decodes
them. Standard ops only — 1x1/3x3 Conv, BatchNorm, ReLU and bilinear Resize with
``align_corners=False`` at fixed sizes — so every backend converts them; the input size is baked
in (ViT-Plus never resizes its position embedding in the graph).

Heads (``dense_head``):

- ``linear``: a 1x1 Conv on the last block's grid, upsampled to the input (segmentation or depth).
- ``mlp``: an all-MLP decoder (SegFormer-style) over several blocks: each projected by a 1x1 Conv,
  concatenated, fused by 1x1 Conv + BatchNorm + ReLU, classified by a 1x1 Conv, upsampled.
- ``dpt``: a light DPT-style decoder (depth): the blocks' projections fused deep to shallow by
  residual 3x3 conv units, then upsampled x2 per step with a 3x3 conv until the patch is undone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.models.vit_plus import VisionTransformerPlus, register_task_model

HEADS = ("linear", "mlp", "dpt")


def default_blocks(head: str, depth: int) -> tuple[int, ...]:
    """The blocks a head reads by default: the last for ``linear``, else four spread evenly."""
    if head == "linear" or depth < 2:
        return (depth - 1,)
    count = min(4, depth)
    return tuple(sorted({round((i + 1) * depth / count) - 1 for i in range(count)}))


def tokens_to_grid(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """N x (prefix + gh*gw) x D tokens -> N x D x gh x gw."""
    return tokens[:, prefix:].transpose(1, 2).unflatten(2, grid)


class _Upsample(nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class LinearHead(nn.Module):
    """1x1 Conv on the last block's grid, bilinearly upsampled to the input size."""

    def __init__(self, dim: int, taps: int, out: int, image: tuple[int, int], width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, out, 1)
        self.up = _Upsample(image)

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        return self.up(self.proj(grids[-1]))  # type: ignore[no-any-return]


class MlpHead(nn.Module):
    """All-MLP decoder over several blocks."""

    def __init__(self, dim: int, taps: int, out: int, image: tuple[int, int], width: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(dim, width, 1) for _ in range(taps))
        self.fuse = nn.Sequential(
            nn.Conv2d(width * taps, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.classify = nn.Conv2d(width, out, 1)
        self.up = _Upsample(image)

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        fused = self.fuse(torch.cat([p(g) for p, g in zip(self.proj, grids, strict=True)], dim=1))
        return self.up(self.classify(fused))  # type: ignore[no-any-return]


class _Residual(nn.Module):
    """DPT's residual conv unit: x + conv(relu(conv(relu(x))))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # type: ignore[no-any-return]


class DptHead(nn.Module):
    """Light DPT-style decoder: fuse the blocks deep to shallow, then upsample step by step."""

    def __init__(
        self, dim: int, taps: int, out: int, image: tuple[int, int], width: int, patch: int = 16
    ) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(dim, width, 1) for _ in range(taps))
        self.fuse = nn.ModuleList(_Residual(width) for _ in range(taps))
        steps, size = max(0, round(math.log2(patch))), []
        h, w = image
        for i in range(steps, 0, -1):  # the sizes after each x2 step, ending at the input size
            size.append((math.ceil(h / 2 ** (i - 1)), math.ceil(w / 2 ** (i - 1))))
        self.up = nn.ModuleList(
            nn.Sequential(_Upsample(s), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for s in size
        )
        self.out = nn.Sequential(nn.Conv2d(width, out, 1), _Upsample(image))

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        feats = [p(g) for p, g in zip(self.proj, grids, strict=True)]
        x = self.fuse[-1](feats[-1])
        for f, unit in zip(reversed(feats[:-1]), reversed(self.fuse[:-1]), strict=True):
            x = unit(x + f)
        for step in self.up:
            x = step(x)
        return self.out(x)  # type: ignore[no-any-return]


def make_head(
    kind: str, dim: int, blocks: Sequence[int], out: int, image: tuple[int, int], patch: int, width: int
) -> nn.Module:
    """The dense head ``kind`` for ``len(blocks)`` token grids of width ``dim``, giving ``out``
    channels at ``image`` size."""
    if kind == "linear":
        return LinearHead(dim, len(blocks), out, image, width)
    if kind == "mlp":
        return MlpHead(dim, len(blocks), out, image, width)
    if kind == "dpt":
        return DptHead(dim, len(blocks), out, image, width, patch)
    raise ValueError(f"unknown dense_head {kind!r}: use one of {', '.join(HEADS)}")


class DenseVisionTransformerPlus(VisionTransformerPlus):
    """A ViT-Plus whose classifier is replaced by a dense head: N x C x H x W segmentation logits,
    or N x 1 x H x W depth in metres.

    Args:
        task: ``segmentation`` or ``depth``.
        dense_head: ``linear``, ``mlp`` or ``dpt``.
        dense_blocks: the blocks the head reads (default: the head's own choice).
        decoder_dim: the head's width.
        **kwargs: any :class:`VisionTransformerPlus` argument.
    """

    def __init__(
        self,
        task: str,
        dense_head: str = "linear",
        dense_blocks: Sequence[int] | None = None,
        decoder_dim: int = 64,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("distill_token"):
            raise ValueError("distill_token is for classification")
        super().__init__(**kwargs)
        self.task = task
        depth = len(self.blocks)
        blocks = tuple(dense_blocks) if dense_blocks is not None else default_blocks(dense_head, depth)
        if not blocks or any(not 0 <= b < depth for b in blocks) or list(blocks) != sorted(set(blocks)):
            raise ValueError(f"dense_blocks must be increasing block indices below {depth}, got {blocks}")
        self.dense_blocks = blocks
        image, patch = self.patch_embed.img_size, self.patch_embed.patch_size
        self.grid = (image[0] // patch[0], image[1] // patch[1])
        out = self.num_classes if task == "segmentation" else 1
        self.head = nn.Identity()  # the dense head replaces the classifier
        self.dense_head = make_head(
            dense_head, self.embed_dim, blocks, out, tuple(image), patch[0], decoder_dim
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The dense head's N x C x H x W output."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.dense_blocks:
                taps.append(self.norm(x) if i == len(self.blocks) - 1 else x)
            if i == self.dense_blocks[-1]:
                break  # blocks after the last one the head reads do not run
        return self.dense_head([tokens_to_grid(t, self.num_prefix_tokens, self.grid) for t in taps])  # type: ignore[no-any-return]


register_task_model("segmentation", DenseVisionTransformerPlus)
register_task_model("depth", DenseVisionTransformerPlus)
