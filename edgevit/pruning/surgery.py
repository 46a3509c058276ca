"""Cut a ViT-Plus down to chosen blocks, heads and MLP neurons: a new, smaller, valid model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from edgevit.models.config import ModelConfig
from edgevit.models.load import create
from edgevit.models.vit_plus import VisionTransformerPlus
from edgevit.pruning.structure import as_vit_plus, head_scales
from edgevit.pruning.structure import blocks as block_views


def _slice_block(
    state: dict[str, torch.Tensor],
    old: str,
    new: str,
    heads: Sequence[int],
    neurons: Sequence[int],
    h: int,
    hd: int,
) -> dict[str, torch.Tensor]:
    """State of block ``old`` keeping ``heads`` (of ``h``) and ``neurons``, renamed to ``new``."""
    hi = torch.tensor(list(heads), dtype=torch.long)
    ni = torch.tensor(list(neurons), dtype=torch.long)
    out = {}
    for key, value in state.items():
        if not key.startswith(old):
            continue
        rel = key[len(old) :]
        if rel == "attn.qkv.weight":
            value = value.view(3, h, hd, -1)[:, hi].reshape(-1, value.shape[1])
        elif rel == "attn.qkv.bias":
            value = value.view(3, h, hd)[:, hi].reshape(-1)
        elif rel == "attn.proj.weight":
            value = value.view(value.shape[0], h, hd)[:, hi].reshape(value.shape[0], -1)
        elif rel in ("attn.norm.weight", "attn.norm.bias"):
            value = value.view(h, hd)[hi].reshape(-1)
        elif rel in ("mlp.fc1.weight", "mlp.fc1.bias", "mlp.norm.weight", "mlp.norm.bias"):
            value = value[ni]
        elif rel == "mlp.fc2.weight":
            value = value[:, ni]
        out[new + rel] = value.clone()
    return out


def apply(
    model: VisionTransformerPlus,
    config: ModelConfig,
    blocks: Sequence[int],
    heads: Mapping[int, Sequence[int]],
    neurons: Mapping[int, Sequence[int]],
) -> tuple[VisionTransformerPlus, ModelConfig]:
    """A new model with only ``blocks`` (old indices), and in each the listed heads and neurons.

    Heads and neurons not named for a kept block are all kept. The result is built by the
    ViT-Plus constructor from the returned config, so it reloads through ``edgevit.models.load``.
    """
    model = as_vit_plus(model)
    scales = model.ms_scales
    state = model.state_dict()
    block_heads: list[list[int]] = []
    block_mlp: list[int] = []
    new_state = {k: v.clone() for k, v in state.items() if not k.startswith("blocks.")}
    views = block_views(model)
    for new_i, old_i in enumerate(blocks):
        blk = views[old_i]
        keep_h = sorted(heads.get(old_i, range(blk.heads)))
        keep_n = sorted(neurons.get(old_i, range(blk.width)))
        per_head = head_scales(blk.attn)
        block_heads.append([sum(1 for h in keep_h if per_head[h] == s) for s in scales])
        block_mlp.append(len(keep_n))
        new_state.update(
            _slice_block(
                state,
                f"blocks.{old_i}.",
                f"blocks.{new_i}.",
                keep_h,
                keep_n,
                blk.attn.num_heads,
                blk.attn.head_dim,
            )
        )
    kwargs = {k: v for k, v in config.model_kwargs.items() if k != "depth"}
    kwargs.update(block_heads=block_heads, block_mlp=block_mlp, head_dim=int(model.head_dim))
    kwargs["ms_scales"] = list(scales)
    pruned = create(config.architecture, num_classes=config.num_classes, **kwargs)
    pruned.load_state_dict(new_state, strict=True)
    assert isinstance(pruned, VisionTransformerPlus)
    return pruned.eval(), config.model_copy(update={"model_kwargs": kwargs})
