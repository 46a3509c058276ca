"""Rotations folded into a ViT's weights (QuaRot/SpinQuant style): the function kept, the outliers spread.

A real pretrained ViT (DINOv2, CLIP, DeiT) leaves a few channels of its residual stream, of its
attention outputs and of its post-GELU activations tens of times larger than the rest. A
per-tensor INT8 grid spends its levels on them. Multiplying an activation by an orthogonal matrix
``Q`` and the weights that read it by ``Qᵀ`` computes the same function, and spreads each large
channel over many: the grid then fits the many.

- **Values.** Attention is linear in ``v`` per head, so each head's value rows of ``qkv`` and the
  matching input columns of ``proj`` take a Hadamard rotation (random signs); the value bias,
  which attention passes through unchanged (its rows sum to 1), moves into ``proj``'s bias.
- **Residual stream.** Every writer (patch embedding, class/register/distillation tokens, position
  embedding, ``proj`` and ``fc2`` with their LayerScale) writes ``x P Q``: ``P`` removes the
  token's mean, which changes nothing since only LayerNorms read the stream, and ``Q`` is a random
  rotation that keeps the all-ones direction, so ``LayerNorm(x P Q) = LayerNorm(x) Q``. Every
  LayerNorm's affine moves into the Linear layers it feeds, which read through ``Q``; the final
  norm's moves into the classifier (or into a new width x width ``head`` of a headless model, a
  float transform on the pooled features).
- **MLP hidden.** The GELU output cannot be rotated offline: a block Hadamard transform runs on it
  before ``fc2`` (:class:`edgevit.models.rotation.BlockHadamard`, a float product every INT8
  target keeps float), and ``fc2``'s weights absorb its inverse.

Each part applies where the model's structure allows it and is skipped, with the reason, where it
does not (a dense task's head reading the tokens, RMSNorm, a norm before the blocks, max pooling).
Because the result is ordinary weights plus recorded modules, every backend gets it from the
exported ONNX or the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgevit.models.rotation import BlockHadamard, FloatLinear, RotationSpec, hadamard

# The Hadamard block before fc2. On DINOv2 ViT-S (simulated, float outputs, feature SQNR): 128 gave
# ONNX Runtime 28.7 and TensorRT 28.2 dB, 64 gave 28.6 and 27.5, 512 27.9 and 26.6. Its float product
# costs in proportion to the block: in ONNX Runtime on an AVX2 host, 1.4 ms per ViT-S block at 64,
# 3.1 ms at 128 (fc2 itself in INT8: about 3 ms).
FC2_BLOCK = 64


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate` folded into a model."""

    values: int  # attention blocks whose value/projection pair was rotated
    residual: bool
    fc2_hadamard: int  # block size, 0: none
    skipped: tuple[str, ...]  # why a part was not applied
    spec: RotationSpec  # the modules the checkpoint's config must record


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_orthogonal(n: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=_generator(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _signed_rotation(n: int, seed: int) -> torch.Tensor:
    """A random-sign Hadamard of order ``n`` where ``n`` is a power of two, else a random orthogonal."""
    if n & (n - 1):
        return _random_orthogonal(n, seed)
    signs = torch.randint(0, 2, (n,), generator=_generator(seed), dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard(n)


def stream_rotation(width: int, seed: int = 0) -> torch.Tensor:
    """A random orthogonal ``width`` x ``width`` matrix that maps the all-ones vector to itself."""
    basis = _random_orthogonal(width, seed)
    basis[:, 0] = 1.0 / math.sqrt(width)
    basis, _ = torch.linalg.qr(basis)  # column 0: ±ones/sqrt(width); the rest spans its complement
    rest = basis[:, 1:]
    ones = torch.full((width, width), 1.0 / width, dtype=torch.float64)
    return rest @ _random_orthogonal(width - 1, seed + 1) @ rest.T + ones


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


def _attention(block: nn.Module) -> Any:
    attn = getattr(block, "attn", None)
    ok = (
        isinstance(getattr(attn, "qkv", None), nn.Linear)
        and isinstance(getattr(attn, "proj", None), nn.Linear)
        and isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity)
        and isinstance(getattr(attn, "head_dim", None), int)
    )
    return attn if ok else None


@torch.no_grad()
def rotate_values(model: nn.Module, seed: int = 0) -> int:
    """Rotate each attention head's values (``qkv`` value rows, ``proj`` columns) in place; fold
    the value bias into ``proj``'s bias. Returns how many blocks were rotated."""
    done = 0
    for i, block in enumerate(getattr(model, "blocks", [])):
        attn = _attention(block)
        if attn is None:
            continue
        width, head = attn.proj.in_features, int(attn.head_dim)
        rows = slice(attn.qkv.out_features - width, attn.qkv.out_features)
        wv = attn.qkv.weight[rows].double()
        if attn.qkv.bias is not None and attn.proj.bias is not None:
            bias = attn.qkv.bias[rows].double()
            _set(attn.proj.bias, attn.proj.bias.double() + attn.proj.weight.double() @ bias)
            attn.qkv.bias[rows] = 0.0
        rotation = torch.block_diag(*[_signed_rotation(head, seed + i)] * (width // head))
        attn.qkv.weight[rows] = (rotation.T @ wv).to(attn.qkv.weight.dtype)  # v -> v R
        _set(attn.proj.weight, attn.proj.weight.double() @ rotation)
        if attn.qkv.bias is not None:
            attn.qkv.bias[rows] = (rotation.T @ attn.qkv.bias[rows].double()).to(attn.qkv.bias.dtype)
        done += 1
    return done


def _final_norm(model: nn.Module) -> nn.LayerNorm | None:
    """The LayerNorm between the last block and the head (``norm``, or ``fc_norm`` after pooling)."""
    norm, fc_norm = getattr(model, "norm", None), getattr(model, "fc_norm", None)
    if isinstance(norm, nn.LayerNorm) and isinstance(fc_norm, nn.Identity | None):
        return norm
    if isinstance(fc_norm, nn.LayerNorm) and isinstance(norm, nn.Identity | None):
        return fc_norm
    return None


def residual_refusal(model: nn.Module) -> str | None:
    """Why the residual stream of ``model`` cannot be rotated (None: it can)."""
    vit: Any = model  # timm's modules, typed loosely
    from timm.models.vision_transformer import Block, VisionTransformer

    from edgevit.models.vit_plus import VisionTransformerPlus

    if type(model) not in (VisionTransformer, VisionTransformerPlus):
        return f"{type(model).__name__} is not a plain timm VisionTransformer (a dense head reads the tokens)"
    if getattr(vit, "attn_pool", None) is not None or vit.global_pool not in ("token", "avg"):
        return f"pooling {vit.global_pool!r} does not commute with a rotation"
    if not isinstance(vit.norm_pre, nn.Identity):
        return "a norm before the blocks (norm_pre) rescales the stream per channel"
    if not isinstance(vit.patch_embed.proj, nn.Conv2d) or not isinstance(vit.patch_embed.norm, nn.Identity):
        return "the patch embedding is not a plain Conv"
    if _final_norm(vit) is None:
        return "the final norm is not a LayerNorm"
    if not isinstance(vit.head, nn.Linear | nn.Identity):
        return "the head is not a Linear"
    for block in vit.blocks:
        mlp = getattr(block, "mlp", None)
        if not (
            type(block) is Block
            and isinstance(block.norm1, nn.LayerNorm)
            and isinstance(block.norm2, nn.LayerNorm)
            and block.norm1.weight is not None
            and block.norm2.weight is not None
            and _attention(block) is not None
            and isinstance(getattr(mlp, "fc1", None), nn.Linear)
            and isinstance(getattr(mlp, "fc2", None), nn.Linear)
        ):
            return "a block is not LayerNorm -> attention (qkv, proj) and LayerNorm -> MLP (fc1, fc2)"
    return None


def _write(linear: nn.Linear, rotation: torch.Tensor, scale: nn.Module) -> None:
    """``linear`` (with the LayerScale ``scale`` after it folded in) writes ``out P Q``."""
    gamma = getattr(scale, "gamma", None)
    weight = linear.weight.double()
    bias = (
        linear.bias.double() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    )
    if gamma is not None:
        weight, bias = gamma.double()[:, None] * weight, gamma.double() * bias
        gamma.fill_(1.0)
    centred = rotation.T @ (weight - weight.mean(0, keepdim=True))
    _set(linear.weight, centred)
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=linear.weight.dtype))
    _set(linear.bias, rotation.T @ (bias - bias.mean()))


def _read(norm: nn.LayerNorm, linear: nn.Linear, rotation: torch.Tensor) -> None:
    """``linear`` reads ``norm``'s output through ``rotation`` with the norm's affine folded in."""
    gamma, beta = norm.weight.double(), norm.bias.double() if norm.bias is not None else 0.0
    weight = linear.weight.double()
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=linear.weight.dtype))
    _set(linear.bias, linear.bias.double() + weight @ beta if norm.bias is not None else linear.bias.double())
    _set(linear.weight, (weight * gamma) @ rotation)


def _centre_rows(value: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Token rows (last dim: the stream) written as ``x P Q``."""
    x = value.double()
    return (x - x.mean(-1, keepdim=True)) @ rotation


@torch.no_grad()
def rotate_residual(model: nn.Module, seed: int = 0) -> bool:
    """Rotate the residual stream of ``model`` in place (see the module doc); False, untouched,
    where :func:`residual_refusal` says it cannot. A headless model gains a width x width head."""
    vit: Any = model  # timm's modules, typed loosely
    if residual_refusal(vit) is not None:
        return False
    width = int(vit.embed_dim)
    rotation = stream_rotation(width, seed)
    conv = vit.patch_embed.proj
    flat = conv.weight.reshape(conv.weight.shape[0], -1).double()
    _set(conv.weight, (rotation.T @ (flat - flat.mean(0, keepdim=True))).reshape(conv.weight.shape))
    if conv.bias is not None:
        _set(conv.bias, rotation.T @ (conv.bias.double() - conv.bias.double().mean()))
    for token in ("cls_token", "reg_token", "dist_token", "pos_embed"):
        param = getattr(vit, token, None)
        if isinstance(param, torch.Tensor):
            _set(param, _centre_rows(param, rotation))
    for block in vit.blocks:
        for norm, reader in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
            _read(norm, reader, rotation)
            norm.weight.fill_(1.0)
            if norm.bias is not None:
                norm.bias.zero_()
        _write(block.attn.proj, rotation, block.ls1)
        _write(block.mlp.fc2, rotation, block.ls2)
    final = _final_norm(vit)
    assert final is not None and final.weight is not None
    if isinstance(vit.head, nn.Identity):
        vit.head = FloatLinear(width, width)
        _set(vit.head.weight, torch.eye(width, dtype=torch.float64))
        vit.head.bias.zero_()
    for head in (vit.head, getattr(vit, "head_dist", None)):
        if isinstance(head, nn.Linear):
            _read(final, head, rotation)
    final.weight.fill_(1.0)
    if final.bias is not None:
        final.bias.zero_()
    return True


@torch.no_grad()
def hadamard_fc2(model: nn.Module, block: int = FC2_BLOCK) -> bool:
    """Run a block Hadamard transform on every MLP's hidden activation before ``fc2`` (whose
    weights absorb it) in place; False, untouched, where a hidden width is not a multiple of
    ``block`` or the MLP has no free ``norm`` slot."""
    vit: Any = model  # timm's modules, typed loosely
    mlps: list[Any] = [getattr(b, "mlp", None) for b in getattr(vit, "blocks", [])]
    if not mlps or not all(
        isinstance(getattr(m, "fc2", None), nn.Linear)
        and isinstance(getattr(m, "norm", None), nn.Identity)
        and m.fc2.in_features % block == 0
        for m in mlps
    ):
        return False
    for mlp in mlps:
        width = mlp.fc2.in_features
        transform = torch.block_diag(*[hadamard(block)] * (width // block))
        _set(mlp.fc2.weight, mlp.fc2.weight.double() @ transform)  # symmetric: its own inverse
        mlp.norm = BlockHadamard(block)
    return True


@torch.no_grad()
def rotate(model: nn.Module, seed: int = 0, fc2_block: int = FC2_BLOCK) -> Rotation:
    """Fold every rotation ``model``'s structure allows into it, in place (float function kept)."""
    skipped: list[str] = []
    headless = isinstance(getattr(model, "head", None), nn.Identity)
    values = rotate_values(model, seed)
    if not values:
        skipped.append("values: no attention with qkv and proj and no norm between them")
    refusal = residual_refusal(model)
    residual = rotate_residual(model, seed + 1000)
    if refusal:
        skipped.append(f"residual stream: {refusal}")
    fc2 = fc2_block if fc2_block and hadamard_fc2(model, fc2_block) else 0
    if fc2_block and not fc2:
        skipped.append(f"fc2: a hidden width is not a multiple of {fc2_block}, or the MLP has a norm")
    spec = RotationSpec(fc2_hadamard=fc2, feature_head=residual and headless)
    return Rotation(values, residual, fc2, tuple(skipped), spec)
