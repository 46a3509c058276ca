"""The int16 pair sums of x86 INT8 kernels without VNNI, in torch.

Without VNNI, ONNX Runtime's MLAS and OpenVINO's oneDNN multiply UINT8 activations by INT8 weights
with ``VPMADDUBSW``: each pair of neighbouring products along the reduction is added in int16 and
saturates at -32768..32767 before ``VPMADDWD`` widens it into the int32 accumulator. The
activation enters with its zero point (UINT8 levels 0..255; the zero point is subtracted after, as
``zero · Σ weights``), so a pair of large same-sign weights overflows even where the activation is
near 0. 7-bit weights (levels up to 64) cannot overflow: 2 · 255 · 64 = 32640.

:func:`pair_excess` is what saturation takes from each exact dot product; :func:`layer_excess`
applies it to a Linear (the reduction runs over its input features) or a Conv (over
``(kh, kw, channel)``, channels padded per kernel position to the backend's block).
Measured against both runtimes on an AVX2 host (``tests/quant/test_simulate.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT16_MIN, INT16_MAX = -32768, 32767
UINT8_MAX = 255
ROWS_PER_CHUNK = 4096  # rows of activations per gathered block: memory stays bounded


def _pad_even(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a zero column appended when its last dimension is odd (the kernels pad K)."""
    return F.pad(t, (0, 1)) if t.shape[-1] % 2 else t


def pair_excess(levels: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``Σ_j saturate(p_j) - p_j`` for every row of ``levels`` (M x K, UINT8 activation levels) and
    row of ``codes`` (N x K, INT8 weight levels), ``p_j`` the pair ``(2j, 2j+1)``'s product sum: M x N.

    Only pairs of same-sign weights whose magnitudes add past 32767 / 255 can overflow; those are
    found once and gathered, so the work grows with them, not with M x N x K.
    """
    codes = _pad_even(codes)
    first, second = codes[:, 0::2], codes[:, 1::2]
    risky = (first * second > 0) & ((first.abs() + second.abs()) * UINT8_MAX > INT16_MAX)
    out_idx, pair_idx = risky.nonzero(as_tuple=True)
    excess = levels.new_zeros(levels.shape[0], codes.shape[0])
    if out_idx.numel() == 0:
        return excess
    w1, w2 = first[risky].to(levels.dtype), second[risky].to(levels.dtype)
    levels = _pad_even(levels)
    for start in range(0, levels.shape[0], ROWS_PER_CHUNK):
        rows = levels[start : start + ROWS_PER_CHUNK]
        p = rows[:, 2 * pair_idx] * w1 + rows[:, 2 * pair_idx + 1] * w2
        excess[start : start + ROWS_PER_CHUNK].index_add_(1, out_idx, p.clamp(INT16_MIN, INT16_MAX) - p)
    return excess


def _conv_order(t: torch.Tensor, channels: int, kernel: tuple[int, int], block: int) -> torch.Tensor:
    """``t`` (..., C·kh·kw in torch's (c, kh, kw) order) reordered to (kh, kw, c), with the
    channels zero-padded to a multiple of ``block`` per kernel position."""
    t = t.reshape(*t.shape[:-1], channels, *kernel).movedim(-3, -1)
    pad = (-channels) % block
    if pad:
        t = F.pad(t, (0, pad))
    return t.reshape(*t.shape[:-3], -1)


def can_saturate(module: nn.Module) -> bool:
    """Whether ``module``'s INT8 kernel reduces with int16 pairs (and :func:`layer_excess` models
    it): a Linear, or a Conv2d without groups (grouped and depthwise ones widen to int32 first)
    and with explicit padding."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding != "same"
    return isinstance(module, nn.Linear)


@torch.no_grad()
def layer_excess(
    module: nn.Module,
    x: torch.Tensor,
    step: float,
    zero: int,
    codes: torch.Tensor,
    weight_step: torch.Tensor,
    conv_block: int = 1,
) -> torch.Tensor:
    """What int16 saturation takes from ``module``'s output (its shape, in output units) for the
    fake-quantized input ``x`` on the UINT8 grid (``step``, ``zero``), weights ``codes`` (output
    channels x the rest, torch's order) with per-channel ``weight_step`` (N x 1)."""
    levels = torch.round(x / step) + zero
    if isinstance(module, nn.Linear):
        flat = levels.reshape(-1, levels.shape[-1])
        excess = pair_excess(flat, codes.to(levels.dtype)) * (step * weight_step[:, 0].to(levels.dtype))
        return excess.reshape(*x.shape[:-1], codes.shape[0])
    assert isinstance(module, nn.Conv2d) and module.groups == 1
    kernel = (int(module.kernel_size[0]), int(module.kernel_size[1]))
    pad_h, pad_w = (0, 0) if isinstance(module.padding, str) else (int(p) for p in module.padding)
    if pad_h or pad_w:  # the padded border holds real zeros: the zero point's level
        levels = F.pad(levels, (pad_w, pad_w, pad_h, pad_h), value=float(zero))
    columns = F.unfold(levels, kernel, dilation=module.dilation, stride=module.stride)  # B, C·kh·kw, L
    batch, _, positions = columns.shape
    columns = _conv_order(columns.transpose(1, 2), module.in_channels, kernel, conv_block)
    weights = _conv_order(codes.to(levels.dtype), module.in_channels, kernel, conv_block)
    excess = pair_excess(columns.reshape(batch * positions, -1), weights)
    excess = excess * (step * weight_step[:, 0].to(levels.dtype))
    out_h = (levels.shape[-2] - module.dilation[0] * (kernel[0] - 1) - 1) // module.stride[0] + 1
    return excess.reshape(batch, positions, -1).transpose(1, 2).reshape(batch, -1, out_h, positions // out_h)
