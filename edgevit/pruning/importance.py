"""Importance of heads, MLP neurons and blocks, measured on calibration data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from edgevit.data.stream import Batched
from edgevit.models.vit_plus import MultiScaleAttention, VisionTransformerPlus
from edgevit.pruning.structure import BlockView, blocks
from edgevit.tasks import TASKS

Importance = Literal["taylor", "magnitude"]


@dataclass
class Scores:
    """Per block: one score per head and one per MLP neuron (higher = more important)."""

    heads: list[np.ndarray]
    neurons: list[np.ndarray]


def _head_terms(attn: MultiScaleAttention, fn: str) -> torch.Tensor:
    """Sum over each head's parameters of ``w*g`` (fn="taylor") or ``w*w`` (fn="magnitude")."""
    h, hd = attn.num_heads, attn.head_dim

    def term(p: torch.Tensor) -> torch.Tensor:
        other = p.grad if fn == "taylor" else p
        assert other is not None, "taylor importance needs gradients"
        return p * other

    qkv = term(attn.qkv.weight).view(3, h, hd, -1).sum(dim=(0, 2, 3))
    if attn.qkv.bias is not None:
        qkv = qkv + term(attn.qkv.bias).view(3, h, hd).sum(dim=(0, 2))
    proj = term(attn.proj.weight).view(-1, h, hd).sum(dim=(0, 2))
    return (qkv + proj).detach()


def _neuron_terms(view: BlockView, fn: str) -> torch.Tensor:
    def term(p: torch.Tensor) -> torch.Tensor:
        other = p.grad if fn == "taylor" else p
        assert other is not None, "taylor importance needs gradients"
        return p * other

    out = term(view.fc1.weight).sum(dim=1) + term(view.fc2.weight).sum(dim=0)
    if view.fc1.bias is not None:
        out = out + term(view.fc1.bias)
    return out.detach()


def taylor(model: VisionTransformerPlus, data: Batched, batch: int, task: str = "classification") -> Scores:
    """First-order Taylor importance: |sum of w * dL/dw| over a unit's weights, averaged over batches.

    It estimates how much the task's loss (cross-entropy; per-pixel cross-entropy; relative depth
    error) changes when the unit is zeroed.
    """
    loss = TASKS.get(task).loss
    model.eval()
    views = blocks(model)
    heads = [torch.zeros(b.heads, dtype=torch.float64) for b in views]
    neurons = [torch.zeros(b.width, dtype=torch.float64) for b in views]
    count = 0
    for xb, yb in data.in_order(batch):
        model.zero_grad(set_to_none=True)
        loss(model(xb), yb).backward()
        for i, view in enumerate(views):
            heads[i] += _head_terms(view.attn, "taylor").abs().double()
            neurons[i] += _neuron_terms(view, "taylor").abs().double()
        count += 1
    model.zero_grad(set_to_none=True)
    return Scores([(h / count).numpy() for h in heads], [(n / count).numpy() for n in neurons])


def magnitude(model: VisionTransformerPlus) -> Scores:
    """L2 norm of each unit's weights, divided by the layer's mean so that layers compare."""

    def normed(t: torch.Tensor) -> np.ndarray:
        v = t.double().sqrt()
        return (v / v.mean().clamp_min(1e-12)).numpy()

    with torch.no_grad():
        return Scores(
            [normed(_head_terms(b.attn, "magnitude")) for b in blocks(model)],
            [normed(_neuron_terms(b, "magnitude")) for b in blocks(model)],
        )


def block_losses(
    model: VisionTransformerPlus, data: Batched, batch: int, task: str = "classification"
) -> np.ndarray:
    """The task's loss increase (per image) when each block is skipped (its residual branches removed)."""
    model.eval()
    objective = TASKS.get(task).loss

    def loss() -> float:
        with torch.no_grad():
            total = sum(float(objective(model(xb), yb)) * len(xb) for xb, yb in data.in_order(batch))
        return total / max(1, len(data))

    base = loss()
    out = []
    for i in range(len(model.blocks)):
        block = model.blocks[i]
        model.blocks[i] = nn.Identity()
        try:
            out.append(loss() - base)
        finally:
            model.blocks[i] = block
    return np.array(out)


def score(
    model: VisionTransformerPlus, kind: Importance, data: Batched, batch: int, task: str = "classification"
) -> Scores:
    """Scores of every head and neuron by ``kind``."""
    return taylor(model, data, batch, task) if kind == "taylor" else magnitude(model)
