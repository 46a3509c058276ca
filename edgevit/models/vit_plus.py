"""ViT-Plus: a timm-compatible Vision Transformer family with multi-scale attention.

Multi-scale attention splits the heads into groups; group ``i`` attends to keys and values
average-pooled over the patch-token grid by ``scales[i]`` (the class token is never pooled).
Pooling has no parameters, so every ViT-Plus holds exactly the weights of the timm ViT of the
same width and depth: timm ViT/DeiT checkpoints load, and with ``ms_scales=(1,)`` the function
is timm's ViT as well. Attention is written with plain MatMul/Softmax/AveragePool so that it
exports to standard ONNX ops that every backend quantizes the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

DEFAULT_MS_SCALES: tuple[int, ...] = (1, 2, 4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_heads(
    num_heads: int, scales: Sequence[int], counts: Sequence[int] | None = None
) -> list[tuple[int, int, int]]:
    """Assign heads to scales: ``[(first_head, count, scale), ...]``, groups without heads left out.

    Without ``counts`` the heads are spread as evenly as possible; with ``counts`` (one per
    scale, as a pruned model records them) group ``i`` gets exactly ``counts[i]`` heads.
    """
    if not scales or any(s < 1 for s in scales):
        raise ValueError(f"ms_scales must be positive integers, got {tuple(scales)}")
    if counts is None:
        if num_heads < len(scales):
            raise ValueError(f"{num_heads} heads cannot be split across {len(scales)} scales {tuple(scales)}")
        base, extra = divmod(num_heads, len(scales))
        counts = [base + (1 if i < extra else 0) for i in range(len(scales))]
    elif len(counts) != len(scales) or any(c < 0 for c in counts) or sum(counts) != num_heads:
        raise ValueError(
            f"head counts {tuple(counts)} must give each of the scales {tuple(scales)} a count >= 0 "
            f"summing to {num_heads} heads"
        )
    groups, start = [], 0
    for count, scale in zip(counts, scales, strict=True):
        if count:
            groups.append((start, int(count), int(scale)))
        start += count
    return groups


class MatMul(nn.Module):
    """``a @ b`` as a module without parameters, so that the INT8 simulator (``edgevit.quant``) can
    quantize the attention matmuls' inputs and outputs with hooks; it exports as a plain MatMul."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The matrix product."""
        return a @ b


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose head groups see keys/values pooled at several scales.

    Parameter names match timm's ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``norm``,
    ``proj``) so the state dicts are interchangeable.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] | None = None,
        *,
        scales: Sequence[int] = (1,),
        grid_size: tuple[int, int] = (14, 14),
        num_prefix_tokens: int = 1,
        head_dim: int | None = None,
        group_heads: Sequence[int] | None = None,
        **factory: Any,
    ) -> None:
        super().__init__()
        dd = {k: v for k, v in factory.items() if k in ("device", "dtype")}
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer is required with qk_norm or scale_norm")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.groups = split_heads(num_heads, scales, group_heads)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(head_dim, **dd) if qk_norm and norm_layer else nn.Identity()
        self.k_norm = norm_layer(head_dim, **dd) if qk_norm and norm_layer else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm and norm_layer else nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        # one pair per head group: each is its own MatMul node, with its own INT8 ranges
        self.qk = nn.ModuleList(MatMul() for _ in self.groups)
        self.av = nn.ModuleList(MatMul() for _ in self.groups)

    @property
    def scales(self) -> tuple[int, ...]:
        """The pooling factor of each head group."""
        return tuple(scale for _, _, scale in self.groups)

    def heads_per_scale(self, scales: Sequence[int]) -> list[int]:
        """Head count of each of ``scales`` (0 where a group has no heads): what a config records."""
        counts = dict.fromkeys(scales, 0)
        for _, count, scale in self.groups:
            counts[scale] += count
        return [counts[s] for s in scales]

    def _pool(self, t: torch.Tensor, factor: int) -> torch.Tensor:
        """Average-pool the grid tokens of ``t`` (B, heads, N, D) by ``factor``; keep prefix tokens."""
        b, h, _, d = t.shape
        p = self.num_prefix_tokens
        gh, gw = self.grid_size
        prefix, grid = t[:, :, :p], t[:, :, p:]
        grid = grid.reshape(b * h, gh, gw, d).permute(0, 3, 1, 2)
        # ceil_mode only matters when the grid does not divide; without it, exporters emit a plain
        # average pool (TFLite AVERAGE_POOL_2D, which XNNPACK runs, instead of a StableHLO window op).
        ragged = gh % factor != 0 or gw % factor != 0
        grid = F.avg_pool2d(grid, factor, factor, ceil_mode=ragged, count_include_pad=False)
        grid = grid.flatten(2).transpose(1, 2).reshape(b, h, -1, d)
        return torch.cat([prefix, grid], dim=2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        """Attend; ``attn_mask`` is accepted for timm API compatibility but must be None."""
        if attn_mask is not None:
            raise NotImplementedError("ViT-Plus multi-scale attention does not take an attention mask")
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        outs = []
        for (start, count, factor), qk, av in zip(self.groups, self.qk, self.av, strict=True):
            qg, kg, vg = (t[:, start : start + count] for t in (q, k, v))
            if factor > 1:
                kg, vg = self._pool(kg, factor), self._pool(vg, factor)
            attn = self.attn_drop(qk(qg, kg.transpose(-2, -1)).softmax(dim=-1))
            outs.append(av(attn, vg))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))


def _bound_attention(
    scales: tuple[int, ...], grid: tuple[int, int], prefix: int, **extra: Any
) -> type[MultiScaleAttention]:
    """A MultiScaleAttention subclass with this model's settings bound (timm wants a class)."""
    bound = {"scales": scales, "grid_size": grid, "num_prefix_tokens": prefix, **extra}

    class BoundMultiScaleAttention(MultiScaleAttention):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**bound, **kwargs})

    return BoundMultiScaleAttention


def _fixed_width(mlp_layer: Callable[..., nn.Module], hidden: int) -> Callable[..., nn.Module]:
    """``mlp_layer`` with its hidden width fixed (timm derives it from a float ratio otherwise)."""

    def make(**kwargs: Any) -> nn.Module:
        return mlp_layer(**{**kwargs, "hidden_features": hidden})

    return make


def _shaped_blocks(
    block_heads: Sequence[Sequence[int]] | None,
    block_mlp: Sequence[int] | None,
    head_dim: int,
    scales: tuple[int, ...],
    grid: tuple[int, int],
    prefix: int,
) -> Callable[..., nn.Module]:
    """A timm ``block_fn`` giving block ``depth`` its own head counts and MLP width (pruned models)."""

    def make(*, depth: int, num_heads: int, mlp_layer: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
        counts = list(block_heads[depth]) if block_heads is not None else None
        heads = sum(counts) if counts is not None else num_heads
        attn = _bound_attention(scales, grid, prefix, head_dim=head_dim, group_heads=counts)
        mlp = _fixed_width(mlp_layer, int(block_mlp[depth])) if block_mlp is not None else mlp_layer
        kwargs.pop("attn_layer", None)
        return Block(depth=depth, num_heads=heads, mlp_layer=mlp, attn_layer=attn, **kwargs)  # type: ignore[arg-type]

    return make


class VisionTransformerPlus(VisionTransformer):  # type: ignore[misc]
    """timm ``VisionTransformer`` with multi-scale attention in every block.

    This class is the classifier; a dense task's model (``task=segmentation|depth``) is its
    subclass in :mod:`edgevit.models.dense`, registered in :data:`TASK_MODELS`.

    Args:
        ms_scales: pooling factor per head group; ``(1,)`` turns multi-scale attention off.
        block_heads: per block, the head count of each scale group (a pruned model; sets depth).
        block_mlp: per block, the MLP hidden width (a pruned model).
        head_dim: width of one attention head (default ``embed_dim // num_heads``).
        distill_token: add a DeiT-style distillation token and head; inference averages both heads.
        **kwargs: any timm ``VisionTransformer`` argument (img_size, patch_size, embed_dim, ...).
    """

    def __init__(
        self,
        ms_scales: Sequence[int] = DEFAULT_MS_SCALES,
        block_heads: Sequence[Sequence[int]] | None = None,
        block_mlp: Sequence[int] | None = None,
        head_dim: int | None = None,
        distill_token: bool = False,
        **kwargs: Any,
    ) -> None:
        img = kwargs.get("img_size", 224)
        patch = kwargs.get("patch_size", 16)
        img_hw = (img, img) if isinstance(img, int) else tuple(img)
        patch_hw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if kwargs.get("dynamic_img_size"):
            raise ValueError("ViT-Plus needs a fixed image size (dynamic_img_size is not supported)")
        grid = (img_hw[0] // patch_hw[0], img_hw[1] // patch_hw[1])
        prefix = (1 if kwargs.get("class_token", True) else 0) + int(kwargs.get("reg_tokens", 0))
        if distill_token:
            if prefix != 1 or kwargs.get("global_pool", "token") != "token" or kwargs.get("no_embed_class"):
                raise ValueError(
                    "distill_token needs a class token, no register tokens and global_pool='token'"
                )
            prefix = 2
        scales = tuple(int(s) for s in ms_scales)
        num_heads = int(kwargs.get("num_heads", 12))
        if head_dim is None:
            head_dim = int(kwargs.get("embed_dim", 768)) // num_heads
        if block_heads is not None or block_mlp is not None:
            depth = len(block_heads) if block_heads is not None else len(block_mlp or [])
            if block_mlp is not None and len(block_mlp) != depth:
                raise ValueError(f"block_mlp has {len(block_mlp)} entries for {depth} blocks")
            for counts in block_heads or []:
                split_heads(sum(counts), scales, counts)  # fail early on a bad head split
                if sum(counts) < 1:
                    raise ValueError(f"every block needs at least one head, got {list(counts)}")
            kwargs["depth"] = depth
            kwargs["block_fn"] = _shaped_blocks(block_heads, block_mlp, head_dim, scales, grid, prefix)
        else:
            split_heads(num_heads, scales)  # fail early on a bad head split
            kwargs["attn_layer"] = _bound_attention(scales, grid, prefix, head_dim=head_dim)
        super().__init__(**kwargs)
        self.ms_scales = scales
        self.head_dim = head_dim
        self.distill_token = distill_token
        self.distilled_training = False
        if distill_token:
            self.num_prefix_tokens = 2
            self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 2, self.embed_dim))
            nn.init.trunc_normal_(self.dist_token, std=0.02)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            self.head_dist = nn.Linear(self.embed_dim, self.num_classes)

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return (class-head, distillation-head) logits separately."""
        self.distilled_training = enable

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.distill_token:
            return super()._pos_embed(x)  # type: ignore[no-any-return]
        assert self.cls_token is not None and self.pos_embed is not None  # checked in __init__
        tokens = (self.cls_token.expand(x.shape[0], -1, -1), self.dist_token.expand(x.shape[0], -1, -1))
        out: torch.Tensor = self.pos_drop(torch.cat([*tokens, x.flatten(1, -2)], dim=1) + self.pos_embed)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Any:
        """Class-token head, or with a distillation token the mean of both heads."""
        if not self.distill_token:
            return super().forward_head(x, pre_logits)
        cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2

    @classmethod
    def from_pretrained(cls, path: str, **overrides: Any) -> VisionTransformerPlus:
        """Load a ViT-Plus from a local checkpoint (directory or file) with its JSON config."""
        from edgevit.models.load import load  # local import: load.py sits above this module

        model = load(checkpoint=path, **overrides).model
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def add_distill_token(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict without a distillation token, given one that starts as a copy of the class token."""
    out = dict(state)
    out["dist_token"] = state["cls_token"].clone()
    pos = state["pos_embed"]
    out["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
    out["head_dist.weight"] = state["head.weight"].clone()
    out["head_dist.bias"] = state["head.bias"].clone()
    return out


@dataclass(frozen=True)
class Variant:
    """Width and depth of one ViT-Plus size."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


VARIANTS: dict[str, Variant] = {
    "tiny": Variant(192, 12, 3),
    "small": Variant(384, 12, 6),
    "base": Variant(768, 12, 12),
    "large": Variant(1024, 24, 16),
    "huge": Variant(1280, 32, 16),
}

# (patch, image) pairs registered for every size, plus the digits-sized model for the default build.
_RESOLUTIONS = ((16, 224), (16, 384), (16, 512), (14, 224))
_EXTRA: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    # Digits-sized models for the embedded default (8x8 digits upscaled to 32x32), four blocks.
    # Patch 8 (4x4 grid) trains to 98.6% in ~2 min on 2 cores; patch 4 (8x8 grid) is ~4x slower.
    "vit_plus_tiny_patch8_32": ("tiny", 8, 32, {"depth": 4}),
    "vit_plus_tiny_patch4_32": ("tiny", 4, 32, {"depth": 4}),
}


_DEFAULTS: dict[str, dict[str, Any]] = {}

# The class that builds a model for each task (``task=...`` in the model arguments); the dense
# tasks' class registers itself from edgevit.models.dense.
TASK_MODELS: dict[str, Callable[..., VisionTransformerPlus]] = {}


def register_task_model(task: str, cls: Callable[..., VisionTransformerPlus]) -> None:
    """Build models of ``task`` with ``cls`` (a second registration of a task raises)."""
    if task in TASK_MODELS:
        raise ValueError(f"task {task!r} is registered twice")
    TASK_MODELS[task] = cls


def _entrypoint(name: str) -> Callable[..., VisionTransformerPlus]:
    def create(pretrained: bool = False, **kwargs: Any) -> VisionTransformerPlus:
        if pretrained:
            raise ValueError(
                f"{name} has no hosted weights; load a local checkpoint with edgevit.models.load"
            )
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        task = kwargs.get("task", "classification")
        if task not in TASK_MODELS:
            raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASK_MODELS)}")
        if task == "classification":
            kwargs.pop("task", None)
        model = TASK_MODELS[task](**{**_DEFAULTS[name], **kwargs})
        img = model.patch_embed.img_size
        model.pretrained_cfg = {  # type: ignore[assignment]
            "architecture": name,
            "input_size": (3, img[0], img[1]),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "num_classes": model.num_classes,
        }
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"ViT-Plus {name} (random init)."
    return create


def _register_all() -> None:
    entries: dict[str, tuple[str, int, int, dict[str, Any]]] = {}
    for size in VARIANTS:
        for patch, img in _RESOLUTIONS:
            entries[f"vit_plus_{size}_patch{patch}_{img}"] = (size, patch, img, {})
    entries.update(_EXTRA)
    module = sys.modules[__name__]
    for name, (size, patch, img, extra) in entries.items():
        v = VARIANTS[size]
        _DEFAULTS[name] = {
            "img_size": img,
            "patch_size": patch,
            "embed_dim": v.embed_dim,
            "depth": v.depth,
            "num_heads": v.num_heads,
            "mlp_ratio": v.mlp_ratio,
            **extra,
        }
        fn = _entrypoint(name)
        setattr(module, name, fn)
        register_model(fn)


TASK_MODELS["classification"] = VisionTransformerPlus
_register_all()
