"""Object detectors on ViT-Plus: a ViTDet-style simple feature pyramid from the last block and a
dense anchor-free head.

The last block's patch tokens (after the final norm), laid out on their grid (stride = the patch),
make the first pyramid level; each further level halves it with a stride-2 3x3 Conv (ViTDet's
*simple* pyramid: no multi-block features). One head, shared by the levels, runs two 3x3
Conv + ReLU layers and gives, at every location, one logit per class and four distances from the
location's centre to the box's sides (softplus, in units of the level's stride): FCOS's
anchor-free form. Standard ops only (Conv, ReLU, Softplus, Mul, Add, Concat, Reshape), so every
backend converts it, and the locations are constants of the graph.

``det_head`` names the head: ``dense`` (the form above; many locations fire per object, so its
detections go through non-maximum suppression). The output is N x A x (4 + classes), the A
locations of every level in order, row by row: each box as ``x0, y0, x1, y1`` in input pixels,
then its class logits (``edgevit.tasks.detection`` decodes, suppresses and scores them).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.models.dense import tokens_to_grid
from edgevit.models.vit_plus import VisionTransformerPlus, register_task_model

HEADS = ("dense",)
PRIOR = 0.01  # the class probability every location starts at (RetinaNet's focal-loss prior)


def level_sizes(grid: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """The (rows, columns) of each pyramid level: the token grid, then halved (rounding up)."""
    sizes = [grid]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def locations(grid: tuple[int, int], stride: int, levels: int) -> torch.Tensor:
    """A x 3: each location's centre (x, y) in input pixels and its level's stride, level by level."""
    rows = []
    for i, (h, w) in enumerate(level_sizes(grid, levels)):
        s = stride * 2**i
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centre = torch.stack([(xx.flatten() + 0.5) * s, (yy.flatten() + 0.5) * s], dim=1)
        rows.append(torch.cat([centre, torch.full((h * w, 1), float(s))], dim=1))
    return torch.cat(rows).float()


class DenseDetectionHead(nn.Module):
    """The simple feature pyramid and the shared anchor-free head (see the module)."""

    def __init__(self, dim: int, classes: int, grid: tuple[int, int], stride: int, levels: int, width: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, width, 1), nn.ReLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
            for _ in range(levels - 1)
        )
        self.tower = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.classify = nn.Conv2d(width, classes, 3, padding=1)
        self.regress = nn.Conv2d(width, 4, 3, padding=1)
        nn.init.constant_(cast(torch.Tensor, self.classify.bias), -math.log((1 - PRIOR) / PRIOR))
        points = locations(grid, stride, levels)
        self.register_buffer("centres", torch.cat([points[:, :2], points[:, :2]], dim=1), persistent=False)
        self.register_buffer(
            "scales", points[:, 2:].repeat(1, 4) * torch.tensor([-1.0, -1, 1, 1]), persistent=False
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.proj(grid)
        levels = [x]
        for step in self.down:
            levels.append(step(levels[-1]))
        outs = []
        for level in levels:
            t = self.tower(level)
            out = torch.cat([self.regress(t), self.classify(t)], dim=1)  # N x (4 + C) x h x w
            outs.append(out.flatten(2).transpose(1, 2))
        out = torch.cat(outs, dim=1)  # N x A x (4 + C)
        sides = F.softplus(out[..., :4])  # distances to the left, top, right and bottom sides
        boxes = self.centres + sides * self.scales  # type: ignore[operator]
        return torch.cat([boxes, out[..., 4:]], dim=-1)


class DetectionVisionTransformerPlus(VisionTransformerPlus):
    """A ViT-Plus whose classifier is replaced by a detector: N x A x (4 + classes) boxes and logits.

    Args:
        task: ``detection``.
        det_head: ``dense`` (anchor-free, needs NMS).
        det_levels: pyramid levels (strides patch, 2 x patch, 4 x patch, ...).
        decoder_dim: the pyramid's and head's width.
        **kwargs: any :class:`VisionTransformerPlus` argument (``num_classes``: the object classes).
    """

    def __init__(
        self,
        task: str = "detection",
        det_head: str = "dense",
        det_levels: int = 3,
        decoder_dim: int = 64,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("distill_token"):
            raise ValueError("distill_token is for classification")
        if det_head not in HEADS:
            raise ValueError(f"unknown det_head {det_head!r}: use one of {', '.join(HEADS)}")
        if det_levels < 1:
            raise ValueError(f"det_levels must be at least 1, got {det_levels}")
        super().__init__(**kwargs)
        self.task = task
        image, patch = self.patch_embed.img_size, self.patch_embed.patch_size
        self.grid = (image[0] // patch[0], image[1] // patch[1])
        self.head = nn.Identity()  # the detector replaces the classifier
        self.det_head = DenseDetectionHead(
            self.embed_dim, self.num_classes, self.grid, patch[0], det_levels, decoder_dim
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """N x A x (4 + classes): boxes in input pixels, then class logits."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        tokens = self.norm(self.blocks(x))
        return self.det_head(tokens_to_grid(tokens, self.num_prefix_tokens, self.grid))  # type: ignore[no-any-return]


register_task_model("detection", DetectionVisionTransformerPlus)
