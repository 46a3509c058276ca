"""Fake quantization in torch of the layers a backend's INT8 artifact quantizes.

``simulate(model, scheme, scope, calibration)`` returns a copy of ``model`` whose Linear layers in
scope (and the patch-embedding Conv with ``patch_embed``) compute on fake-quantized inputs and
weights: inputs on per-tensor grids calibrated by min/max over the calibration images, as the
targets calibrate, weights per output channel. Layers named in ``float_layers`` stay float.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgevit.quant.outliers import outlier_pairs
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
HEADS = ("head", "head_dist")
EPS32 = float(torch.finfo(torch.float32).eps)  # the classifier layers, whose outputs are the model's


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
def channel_absmax(
    model: nn.Module, layers: list[str], calibration: np.ndarray, batch: int = 64
) -> dict[str, torch.Tensor]:
    """Per input channel, the absolute maximum of each layer's input over the calibration images."""
    stats: dict[str, torch.Tensor] = {}

    def observe(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).abs().amax(dim=0).double()
            stats[name] = x if name not in stats else torch.maximum(stats[name], x)

        return hook

    run_calibration(
        model,
        calibration,
        [model.get_submodule(n).register_forward_pre_hook(observe(n)) for n in layers],
        batch,
    )
    return stats


@torch.no_grad()
def fold_norms(model: nn.Module) -> list[str]:
    """Fold each block LayerNorm's γ/β into the Linear layers it feeds (``W·diag(γ)``, ``b + Wβ``),
    in place, as the TFLite converter does; the function is unchanged. Returns the folded norms."""
    folded = []
    for pair in outlier_pairs(model):
        norm = model.get_submodule(pair.norm)
        if not pair.norm.startswith("blocks.") or not isinstance(norm, nn.LayerNorm) or norm.weight is None:
            continue  # the final norm reaches the head through pooling: the converter keeps it
        gamma = norm.weight.double()
        beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(gamma)
        for name in pair.linears:
            lin = model.get_submodule(name)
            assert isinstance(lin, nn.Linear)
            shift = lin.weight.double() @ beta
            lin.weight.copy_((lin.weight.double() * gamma).to(lin.weight.dtype))
            if lin.bias is None:
                lin.bias = nn.Parameter(shift.to(lin.weight.dtype))
            else:
                lin.bias.copy_((lin.bias.double() + shift).to(lin.bias.dtype))
        norm.weight.fill_(1.0)
        if norm.bias is not None:
            norm.bias.zero_()
        folded.append(pair.norm)
    return folded


@torch.no_grad()
def smooth(model: nn.Module, layers: list[str], calibration: np.ndarray, alpha: float) -> None:
    """NNCF's SmoothQuant as OpenVINO's INT8 computes it: each layer's input divided per channel by
    ``s = a**alpha / w**(1 - alpha)``, clipped to [its 10th percentile, 100] as NNCF clips it (a
    hook, as NNCF's inserted Multiply), and its weight columns multiplied by ``s``; the function is
    unchanged."""
    stats = channel_absmax(model, layers, calibration)
    for name in layers:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            continue
        a = stats[name]
        w = module.weight.abs().amax(dim=0).double()
        s = a.clamp(min=1e-5) ** alpha / (w.clamp(min=1e-5) ** (1 - alpha) + EPS32)
        s = s.clamp(min=float(torch.quantile(s, 0.1)), max=100.0)  # NNCF's clip: 10th percentile, 100
        module.weight.copy_((module.weight.double() * s).to(module.weight.dtype))
        inverse = (1 / s).to(module.weight.dtype)
        module.register_forward_pre_hook(lambda _m, args, inv=inverse: (args[0] * inv, *args[1:]))


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear | nn.Conv2d)
    return module.weight.data


class Simulation:
    """A model computing as an INT8 artifact would, whose layers can be switched back to float one
    at a time (:meth:`floating`) without recalibrating: the targets calibrate every range on the
    float model, so a layer kept float leaves the others' grids as they are."""

    def __init__(self, model: nn.Module, layers: list[str], quantized: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.layers = layers  # the quantized layers' module paths, in model order
        self._quantized = quantized
        self._float = {n: _weight(model, n).clone() for n in layers}
        self.floating_now: frozenset[str] = frozenset()
        for name in layers:
            _weight(model, name).copy_(quantized[name])

    @contextmanager
    def floating(self, names: Iterable[str]) -> Iterator[nn.Module]:
        """The model with ``names`` computing in float (inputs, weights and outputs) meanwhile."""
        chosen = frozenset(names) & frozenset(self.layers)
        previous = self.floating_now
        self._set(chosen)
        try:
            yield self.model
        finally:
            self._set(previous)

    @torch.no_grad()
    def _set(self, names: frozenset[str]) -> None:
        for name in self.layers:
            source = self._float if name in names else self._quantized
            _weight(self.model, name).copy_(source[name])
        self.floating_now = names


@torch.no_grad()
def simulation(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    patch_embed: bool = False,
    float_layers: Iterable[str] = (),
) -> Simulation:
    """A copy of ``model`` computing as ``scheme``'s INT8 artifact would (see the module)."""
    sim = copy.deepcopy(model).eval()
    if scheme.folds_norms:
        fold_norms(sim)
    layers = in_scope(sim, patch_embed, float_layers)
    if scheme.smooth_alpha is not None:
        smooth(sim, layers, calibration, scheme.smooth_alpha)
    in_ranges, out_ranges = calibrate(sim, layers, calibration, scheme.output_after_bias)
    quantized: dict[str, torch.Tensor] = {}
    result: Simulation

    def active(name: str) -> bool:
        return name not in result.floating_now

    for name in layers:
        module = sim.get_submodule(name)
        assert isinstance(module, nn.Linear | nn.Conv2d)
        quantized[name] = scheme.quantize_weight(module.weight.detach())
        lo, hi = in_ranges[name]

        def quantize_input(
            _m: nn.Module, a: tuple[torch.Tensor, ...], n: str = name, lo: float = lo, hi: float = hi
        ) -> tuple[torch.Tensor, ...] | None:
            return (scheme.quantize_activation(a[0], lo, hi), *a[1:]) if active(n) else None

        module.register_forward_pre_hook(quantize_input)
        if scheme.quantize_outputs and (scheme.head_output or name not in HEADS):
            olo, ohi = out_ranges[name]

            def quantize_output(
                m: nn.Module, _a: object, out: torch.Tensor, n: str = name, lo: float = olo, hi: float = ohi
            ) -> torch.Tensor | None:
                if not active(n):
                    return None
                pre = _pre_bias(m, out, scheme.output_after_bias)
                if pre is out:
                    return scheme.quantize_activation(out, lo, hi)
                return scheme.quantize_activation(pre, lo, hi).add_(out - pre)  # the bias, after Q/DQ

            module.register_forward_hook(quantize_output)
    result = Simulation(sim, layers, quantized)
    return result


def simulate(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    patch_embed: bool = False,
    float_layers: Iterable[str] = (),
) -> nn.Module:
    """A copy of ``model`` computing as ``scheme``'s INT8 artifact would (see the module)."""
    return simulation(model, scheme, calibration, patch_embed, float_layers).model
