"""Function-preserving activation outliers: make a ViT's LayerNorm outputs look like a trained one's.

Trained ViT-S/B models carry a few LayerNorm-output channels tens of times larger than the rest
(the reason SmoothQuant and RepQ-ViT exist). Our small digits and shapes models were trained for
minutes and have none, so per-tensor INT8 never meets the case users bring. ``add_outliers``
makes it without changing the model's function: for each LayerNorm that feeds Linear layers, a
few output channels are scaled up (γ and β by ``s``) and the consuming Linear's input columns
scaled down by the same ``s``. Pooling the class token or averaging tokens commutes with a
per-channel scale, so the final norm → head pair is treated the same way. Benchmarks and tests
share this one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OutlierPair:
    """One LayerNorm whose output channels were scaled, and the Linear layers that consume them."""

    norm: str
    linears: tuple[str, ...]


def outlier_pairs(model: nn.Module) -> list[OutlierPair]:
    """The LayerNorm → Linear pairs of a timm-style ViT (ViT-Plus included): each block's
    ``norm1`` → ``attn.qkv`` and ``norm2`` → ``mlp.fc1``, and the final norm → the head(s)."""
    pairs = []
    for i, block in enumerate(getattr(model, "blocks", [])):
        for norm, linear in (("norm1", "attn.qkv"), ("norm2", "mlp.fc1")):
            if isinstance(getattr(block, norm, None), nn.LayerNorm) and isinstance(
                block.get_submodule(linear), nn.Linear
            ):
                pairs.append(OutlierPair(f"blocks.{i}.{norm}", (f"blocks.{i}.{linear}",)))
    final = next((n for n in ("fc_norm", "norm") if isinstance(getattr(model, n, None), nn.LayerNorm)), None)
    heads = tuple(h for h in ("head", "head_dist") if isinstance(getattr(model, h, None), nn.Linear))
    if final is not None and heads:
        pairs.append(OutlierPair(final, heads))
    return pairs


@torch.no_grad()
def add_outliers(
    model: nn.Module,
    channels: int = 2,
    low: float = 30.0,
    high: float = 60.0,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """Scale ``channels`` output channels of every LayerNorm of :func:`outlier_pairs` by a factor
    drawn from [``low``, ``high``] and the consuming Linear columns by its inverse, in place.

    Returns:
        Per LayerNorm, the scaled channels and their factors (for reports and tests).
    """
    gen = torch.Generator().manual_seed(seed)
    applied: dict[str, dict[int, float]] = {}
    for pair in outlier_pairs(model):
        norm = model.get_submodule(pair.norm)
        assert isinstance(norm, nn.LayerNorm) and norm.weight is not None
        width = norm.weight.numel()
        picked = torch.randperm(width, generator=gen)[: min(channels, width)]
        factors = low + (high - low) * torch.rand(len(picked), generator=gen, dtype=torch.float64)
        scale = torch.ones(width, dtype=torch.float64)
        scale[picked] = factors
        norm.weight.copy_((norm.weight.double() * scale).to(norm.weight.dtype))
        if norm.bias is not None:
            norm.bias.copy_((norm.bias.double() * scale).to(norm.bias.dtype))
        for name in pair.linears:
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            linear.weight.copy_((linear.weight.double() / scale).to(linear.weight.dtype))
        applied[pair.norm] = {int(c): round(float(f), 3) for c, f in zip(picked, factors, strict=True)}
    return applied
