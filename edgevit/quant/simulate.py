"""Fake quantization in torch of the layers a backend's INT8 artifact quantizes.

``simulate(model, scheme, scope, calibration)`` returns a copy of ``model`` whose Linear layers in
scope (and the patch-embedding Conv with ``patch_embed``) compute on fake-quantized inputs and
weights: inputs on per-tensor grids calibrated by min/max over the calibration images, as the
targets calibrate, weights per output channel. Layers named in ``float_layers`` stay float.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgevit.quant.scheme import Int8Scheme


def in_scope(model: nn.Module, patch_embed: bool, float_layers: Iterable[str] = ()) -> list[str]:
    """Module paths of the layers INT8 quantizes: every Linear (the MatMul/Gemm layers with weights)
    and, with ``patch_embed``, the patch-embedding Conv; none of ``float_layers``."""
    keep = set(float_layers)
    return [
        name
        for name, module in model.named_modules()
        if name not in keep
        and (isinstance(module, nn.Linear) or (patch_embed and isinstance(module, nn.Conv2d)))
    ]


def _pre_bias(module: nn.Module, out: torch.Tensor, after_bias: bool = False) -> torch.Tensor:
    """A layer's output as the quantizer sees it: a Linear on tokens exports as MatMul + Add, whose
    Q/DQ sits before the bias; on a 2-D input (the head) it is a Gemm, bias included; a Conv too."""
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear) and out.dim() > 2 and bias is not None and not after_bias:
        return out - bias
    return out


Ranges = dict[str, tuple[float, float]]


@torch.no_grad()
def calibrate(
    model: nn.Module, layers: list[str], calibration: np.ndarray, after_bias: bool = False, batch: int = 64
) -> tuple[Ranges, Ranges]:
    """Global min and max of each layer's input and output (before the bias unless ``after_bias``,
    see ``_pre_bias``) over the calibration images, on the float model: the targets' MinMax rule."""
    inputs: Ranges = {}
    outputs: Ranges = {}

    def widen(ranges: Ranges, name: str, t: torch.Tensor) -> None:
        lo, hi = float(t.min()), float(t.max())
        old = ranges.get(name)
        ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    handles = []
    for name in layers:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda _m, a, n=name: widen(inputs, n, a[0])))
        handles.append(
            module.register_forward_hook(
                lambda m, _a, o, n=name: widen(outputs, n, _pre_bias(m, o, after_bias))
            )
        )
    run_calibration(model, calibration, handles, batch)
    return inputs, outputs


@torch.no_grad()
def run_calibration(
    model: nn.Module, calibration: np.ndarray, handles: list[RemovableHandle], batch: int = 64
) -> None:
    """Run the calibration images through ``model`` in eval mode, batch by batch, for the hooks
    behind ``handles`` to collect their statistics; then remove the hooks."""
    try:
        model.eval()
        for i in range(0, len(calibration), batch):
            model(torch.from_numpy(calibration[i : i + batch]))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def simulate(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    patch_embed: bool = False,
    float_layers: Iterable[str] = (),
) -> nn.Module:
    """A copy of ``model`` computing as ``scheme``'s INT8 artifact would (see the module)."""
    sim = copy.deepcopy(model).eval()
    layers = in_scope(sim, patch_embed, float_layers)
    in_ranges, out_ranges = calibrate(sim, layers, calibration, scheme.output_after_bias)
    for name in layers:
        module = sim.get_submodule(name)
        assert isinstance(module, nn.Linear | nn.Conv2d)
        module.weight.copy_(scheme.quantize_weight(module.weight))
        lo, hi = in_ranges[name]
        module.register_forward_pre_hook(
            lambda _m, a, lo=lo, hi=hi: (scheme.quantize_activation(a[0], lo, hi), *a[1:])
        )
        if scheme.quantize_outputs:
            olo, ohi = out_ranges[name]

            def quantize_output(
                m: nn.Module, _a: object, out: torch.Tensor, lo: float = olo, hi: float = ohi
            ) -> torch.Tensor:
                pre = _pre_bias(m, out, scheme.output_after_bias)
                return out - pre + scheme.quantize_activation(pre, lo, hi)

            module.register_forward_hook(quantize_output)
    return sim
