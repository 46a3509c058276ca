"""The modules a rotated model carries beyond its architecture, and how a config rebuilds them.

``edgevit.quant.rotate`` folds orthogonal rotations into a ViT's weights so that INT8 grids see
activations without the few huge channels real pretraining leaves. Most of it is only new weight
values; two parts change the model's structure, recorded in :class:`RotationSpec` so that a saved
checkpoint loads again:

- a block Hadamard transform run on every MLP's hidden activation, before ``fc2`` (in timm's
  ``mlp.norm`` slot, an identity otherwise): the GELU output cannot be rotated offline, so it is
  rotated while the model runs, by a small float matrix product every INT8 target leaves float;
- a width x width ``head`` in a headless model, where the rotation of the residual stream is
  undone after the final norm (a float transform on the pooled features; a classifier absorbs
  the un-rotation into its own weights instead).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class RotationSpec(BaseModel):
    """What a rotated checkpoint adds to its architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fc2_hadamard: int = Field(default=0, ge=0, description="block size of the Hadamard before fc2; 0: none")
    feature_head: bool = Field(
        default=False, description="a headless model's features pass a width x width head"
    )


class FloatLinear(nn.Linear):
    """A Linear that no INT8 scope takes: a fixed transform a rotation added, not a layer of the
    model (its input is the activation the transform exists to spread)."""


class BlockHadamard(nn.Module):
    """``x`` times the normalized Sylvester Hadamard matrix of order ``block`` on each run of
    ``block`` channels (a block-diagonal orthogonal and symmetric matrix): one ``block`` x ``block``
    matrix product over all of them, a float :class:`FloatLinear` named ``transform``. (A fast
    Walsh-Hadamard transform of additions only ran 5x slower in ONNX Runtime: log2(block) stages of
    small ops.)"""

    def __init__(self, block: int) -> None:
        super().__init__()
        if block < 2 or block & (block - 1):
            raise ValueError(f"a Hadamard block is a power of two, not {block}")
        self.block = block
        self.transform = FloatLinear(block, block, bias=False)
        with torch.no_grad():
            self.transform.weight.copy_(hadamard(block, torch.float32))  # symmetric: x Hᵀ = x H
        self.transform.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x.reshape(-1, self.block)).reshape(x.shape)


def float_transforms(model: nn.Module) -> list[str]:
    """Module paths of the :class:`FloatLinear` transforms in ``model``, which every INT8 target
    keeps float."""
    return [name for name, module in model.named_modules() if isinstance(module, FloatLinear)]


def hadamard(order: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix of ``order`` (a power of two): what
    :class:`BlockHadamard` multiplies each block by."""
    matrix = torch.ones(1, 1, dtype=dtype)
    while matrix.shape[0] < order:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix / math.sqrt(order)


def attach(model: nn.Module, spec: RotationSpec | None) -> nn.Module:
    """Give ``model`` (as its architecture builds it) the modules ``spec`` records, before its
    rotated weights load; returns it."""
    if spec is None:
        return model
    if spec.fc2_hadamard:
        for block in model.blocks:  # type: ignore[union-attr]
            block.mlp.norm = BlockHadamard(spec.fc2_hadamard)
    if spec.feature_head:
        width = int(model.embed_dim)  # type: ignore[arg-type]
        model.head = FloatLinear(width, width)
    return model
