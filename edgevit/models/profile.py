"""Size of a model: parameters and multiply-accumulates per image, counted, not estimated."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by torch's FlopCounterMode.

    Every matrix product is counted (Linear, Conv, the attention MatMuls); element-wise ops,
    normalisation and pooling are not, as is usual for MAC figures.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return int(counter.get_total_flops()) // 2
