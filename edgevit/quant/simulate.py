"""Fake quantization in torch of the layers a backend's INT8 artifact quantizes.

``simulate(model, scheme, calibration, scope)`` returns a copy of ``model`` whose layers in
``scope`` (Linear layers; the patch-embedding Conv and the attention matmuls when the recipe
quantizes them) compute on fake-quantized inputs and weights: inputs on per-tensor grids calibrated
by min/max over the calibration images, as the targets calibrate, weights per output channel.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgevit.models.rotation import FloatLinear
from edgevit.models.vit_plus import MatMul
from edgevit.quant.outliers import outlier_pairs
from edgevit.quant.ranges import RangeSearch
from edgevit.quant.saturation import can_saturate, layer_excess
from edgevit.quant.scheme import Int8Scheme

if TYPE_CHECKING:
    from edgevit.quant.settings import QuantizeStage


@dataclass(frozen=True)
class Scope:
    """The layers an INT8 artifact quantizes: every Linear (the MatMul/Gemm layers with weights),
    with ``patch_embed`` the patch-embedding Conv, with ``matmuls`` the attention matmuls (q@kᵀ and
    attn@v: ``matmul_scope: all``), none of ``float_layers``."""

    patch_embed: bool = False
    matmuls: bool = False
    float_layers: tuple[str, ...] = ()

    @classmethod
    def of(cls, stage: QuantizeStage) -> Scope:
        """The scope a recipe's quantize stage sets."""
        return cls(stage.patch_embed, stage.matmul_scope == "all", tuple(stage.float_layers))

    def layers(self, model: nn.Module) -> list[str]:
        """Module paths of the layers in scope, in model order."""
        keep = set(self.float_layers)
        return [
            name
            for name, module in model.named_modules()
            if name not in keep
            and (
                (isinstance(module, nn.Linear) and not isinstance(module, FloatLinear))
                or (self.patch_embed and isinstance(module, nn.Conv2d))
                or (self.matmuls and isinstance(module, MatMul))
            )
        ]


LINEAR = Scope()  # the default: Linear layers only


def _pre_bias(module: nn.Module, out: torch.Tensor, after_bias: bool = False) -> torch.Tensor:
    """A layer's output as the quantizer sees it: a Linear on tokens exports as MatMul + Add, whose
    Q/DQ sits before the bias; on a 2-D input (the head) it is a Gemm, bias included; a Conv too."""
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear) and out.dim() > 2 and bias is not None and not after_bias:
        return out - bias
    return out


Ranges = dict[str, tuple[float, float]]
InputRanges = dict[str, list[tuple[float, float]]]  # per quantized input: two for an attention matmul
HEADS = ("head", "head_dist")  # the classifier layers, whose outputs are the model's
EPS32 = float(torch.finfo(torch.float32).eps)


def _inputs(module: nn.Module) -> int:
    """How many of a layer's inputs are activations: both of a matmul's, a Linear's or Conv's one."""
    return 2 if isinstance(module, MatMul) else 1


def quantized_inputs(model: nn.Module, name: str, scheme: Int8Scheme) -> tuple[int, ...]:
    """Which inputs of layer ``name`` ``scheme``'s artifact quantizes (see ``Int8Scheme.attention``)."""
    if not isinstance(model.get_submodule(name), MatMul) or scheme.attention == "all":
        return tuple(range(_inputs(model.get_submodule(name))))
    parent, kind, index = name.rsplit(".", 2)
    if scheme.attention == "none" or kind != "qk":
        return ()
    groups = getattr(model.get_submodule(parent), "groups", [])
    return (0, 1) if groups[int(index)][2] == 1 else (0,)  # pooled keys reach it unquantized


@torch.no_grad()
def calibrate(
    model: nn.Module, layers: list[str], calibration: np.ndarray, after_bias: bool = False, batch: int = 64
) -> tuple[InputRanges, Ranges]:
    """Global min and max of each layer's inputs and output (before the bias unless ``after_bias``,
    see ``_pre_bias``) over the calibration images, on the float model: the targets' MinMax rule."""
    inputs: InputRanges = {}
    outputs: Ranges = {}

    def span(t: torch.Tensor, old: tuple[float, float] | None) -> tuple[float, float]:
        lo, hi = float(t.min()), float(t.max())
        return (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    def observe_inputs(module: nn.Module, args: tuple[torch.Tensor, ...], name: str) -> None:
        old = inputs.get(name)
        inputs[name] = [span(args[i], old[i] if old else None) for i in range(_inputs(module))]

    handles = []
    for name in layers:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: observe_inputs(m, a, n)))
        handles.append(
            module.register_forward_hook(
                lambda m, _a, o, n=name: outputs.__setitem__(
                    n, span(_pre_bias(m, o, after_bias), outputs.get(n))
                )
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
    device = next(model.parameters()).device
    try:
        model.eval()
        for i in range(0, len(calibration), batch):
            model(torch.from_numpy(calibration[i : i + batch]).to(device))
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
def fold_norms(model: nn.Module, shifts: bool = True) -> list[str]:
    """Fold each block LayerNorm's γ/β into the Linear layers it feeds (``W·diag(γ)``, ``b + Wβ``),
    in place, as the TFLite converter does; the function is unchanged. Returns the folded norms.
    Without ``shifts`` only γ moves (β becomes β/γ, no bias is added: the model's parameters keep
    their names; a norm with a zero γ is left as it is)."""
    folded = []
    for pair in outlier_pairs(model):
        norm = model.get_submodule(pair.norm)
        if not pair.norm.startswith("blocks.") or not isinstance(norm, nn.LayerNorm) or norm.weight is None:
            continue  # the final norm reaches the head through pooling: the converter keeps it
        gamma = norm.weight.double()
        if not shifts and bool((gamma == 0).any()):
            continue
        beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(gamma)
        for name in pair.linears:
            lin = model.get_submodule(name)
            assert isinstance(lin, nn.Linear)
            shift = lin.weight.double() @ beta
            lin.weight.copy_((lin.weight.double() * gamma).to(lin.weight.dtype))
            if not shifts:
                continue
            if lin.bias is None:
                lin.bias = nn.Parameter(shift.to(lin.weight.dtype))
            else:
                lin.bias.copy_((lin.bias.double() + shift).to(lin.bias.dtype))
        norm.weight.fill_(1.0)
        if norm.bias is not None:
            norm.bias.copy_((beta / gamma if not shifts else torch.zeros_like(beta)).to(norm.bias.dtype))
        folded.append(pair.norm)
    return folded


@torch.no_grad()
def smooth(
    model: nn.Module, layers: list[str], calibration: np.ndarray, alpha: float
) -> dict[str, torch.Tensor]:
    """NNCF's SmoothQuant as OpenVINO's INT8 computes it: each layer's input divided per channel by
    ``s = a**alpha / w**(1 - alpha)``, clipped to [its 10th percentile, 100] as NNCF clips it (a
    hook, as NNCF's inserted Multiply), and its weight columns multiplied by ``s``; the function is
    unchanged. Returns each layer's ``s``."""
    stats = channel_absmax(model, layers, calibration)
    scales: dict[str, torch.Tensor] = {}
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
        module.register_forward_pre_hook(
            lambda _m, args, inv=inverse: (args[0] * inv.to(args[0].device), *args[1:])
        )
        scales[name] = s
    return scales


def _weight(model: nn.Module, name: str) -> torch.Tensor | None:
    weight = getattr(model.get_submodule(name), "weight", None)
    return weight.data if isinstance(weight, torch.Tensor) else None


class _FakeQuantizedWeight(nn.Module):
    """A weight parametrization for quantization-aware training: the weight on the INT8 grid in the
    forward pass, its gradient passed straight through to the float weight (STE)."""

    def __init__(self, simulation: Simulation, name: str) -> None:
        super().__init__()
        self._simulation = [simulation]  # a list: not a submodule
        self._name = name

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` fake-quantized unless its layer is floating."""
        if self._name in self._simulation[0].floating_now:
            return w
        return w + (self._simulation[0].scheme.quantize_weight(w.detach()) - w).detach()


class Simulation:
    """A model computing as an INT8 artifact would, whose layers can be switched back to float one
    at a time (:meth:`floating`) without recalibrating: the targets calibrate every range on the
    float model, so a layer kept float leaves the others' grids as they are.

    With ``trainable`` the weights stay float parameters, fake-quantized in each forward pass with a
    straight-through gradient, and :meth:`recalibrate` re-estimates the activation ranges on the
    current weights: quantization-aware training (``edgevit.stages.qat``).
    """

    def __init__(
        self, model: nn.Module, scheme: Int8Scheme, layers: list[str], trainable: bool = False
    ) -> None:
        self.model = model
        self.scheme = scheme
        which = {n: quantized_inputs(model, n, scheme) for n in layers}
        self.layers = [n for n in layers if which[n]]  # the quantized layers' module paths, in model order
        self._which = which
        self._attention = {n for n in self.layers if isinstance(model.get_submodule(n), MatMul)}
        self.trainable = trainable
        self.floating_now: frozenset[str] = frozenset()
        self.inputs: InputRanges = {}
        self.outputs: Ranges = {}
        self.smoothed: dict[str, torch.Tensor] = {}  # OpenVINO: each layer's SmoothQuant scales
        self._float: dict[str, torch.Tensor] = {}
        self._quantized: dict[str, torch.Tensor] = {}
        self._codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # weight levels and steps
        weighted = [n for n in self.layers if _weight(model, n) is not None]
        if trainable:
            from torch.nn.utils import parametrize

            for name in weighted:
                parametrize.register_parametrization(
                    model.get_submodule(name), "weight", _FakeQuantizedWeight(self, name)
                )
        else:
            with torch.no_grad():
                for name in weighted:
                    weight = _weight(model, name)
                    assert weight is not None
                    self._float[name] = weight.clone()
                    self._quantized[name] = scheme.quantize_weight(weight)
                    weight.copy_(self._quantized[name])
        for name in self.layers:
            module = model.get_submodule(name)
            module.register_forward_pre_hook(lambda _m, a, n=name: self._quantize_inputs(n, a))
            if scheme.saturates and name in weighted and can_saturate(module):
                # before the output's Q/DQ: the int32 accumulator is what saturation changes
                module.register_forward_hook(lambda m, a, out, n=name: self._saturate(n, m, a, out))
            if (
                scheme.quantize_outputs
                and (scheme.head_output or name not in HEADS)
                and (scheme.attention == "all" or not isinstance(module, MatMul))
            ):
                module.register_forward_hook(lambda m, _a, out, n=name: self._quantize_output(n, m, out))

    def _quantize_inputs(self, name: str, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if name in self.floating_now:
            return None
        ranges, which = self.inputs[name], self._which[name]
        quantize = (
            self.scheme.quantize_attention_input
            if name in self._attention
            else self.scheme.quantize_activation
        )
        return tuple(quantize(a, *ranges[i]) if i in which else a for i, a in enumerate(args))

    def _saturate(
        self, name: str, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> torch.Tensor | None:
        """``out`` less what the int16 pair sums of ``scheme`` lose (see ``edgevit.quant.saturation``):
        computed from the quantized input and the weights' levels, passed through as a constant
        (no gradient) in training."""
        if name in self.floating_now:
            return None
        step, zero = self.scheme.activation_grid(*self.inputs[name][0])
        if step == 0:
            return None
        if name in self._codes:
            codes, weight_step = self._codes[name]
        elif self.trainable:  # the float weight behind the parametrization, as it is now
            original = cast(torch.Tensor, module.parametrizations.weight.original)  # type: ignore[union-attr]
            codes, weight_step = self.scheme.weight_codes(original.detach())
        else:
            codes, weight_step = self._codes[name] = self.scheme.weight_codes(self._float[name])
        return out + layer_excess(
            module, args[0].detach(), step, zero, codes, weight_step, self.scheme.conv_channel_block
        )

    def _quantize_output(self, name: str, module: nn.Module, out: torch.Tensor) -> torch.Tensor | None:
        if name in self.floating_now:
            return None
        lo, hi = self.outputs[name]
        pre = _pre_bias(module, out, self.scheme.output_after_bias)
        if pre is out:
            return self.scheme.quantize_activation(out, lo, hi)
        return self.scheme.quantize_activation(pre, lo, hi) + (out - pre)  # the bias, after Q/DQ

    def recalibrate(self, calibration: np.ndarray, batch: int = 64) -> None:
        """Set every activation range to its min/max over ``calibration`` on the float model (every
        layer floating meanwhile), as the targets calibrate."""
        with self.floating(self.layers) as model:
            self.inputs, self.outputs = calibrate(
                model, self.layers, calibration, self.scheme.output_after_bias, batch
            )
            if self.scheme.head_range_over_tokens:
                self._head_range_over_tokens(model, calibration, batch)
            if self.scheme.input_ranges == "mse" and not self.scheme.dynamic_rows:
                self._search_input_ranges(model, calibration, batch)

    def _search_input_ranges(self, model: nn.Module, calibration: np.ndarray, batch: int) -> None:
        """Shrink each weighted layer's input range by its factor of least squared error on the
        calibration images (``edgevit.quant.ranges``), on the float model, as the QDQ targets do."""
        search = RangeSearch(self.scheme)
        handles = [
            model.get_submodule(name).register_forward_pre_hook(
                lambda _m, a, n=name: search.add(n, a[0], *self.inputs[n][0])
            )
            for name in self.layers
            if _weight(model, name) is not None and 0 in self._which[name]
        ]
        run_calibration(model, calibration, handles, batch)
        for name, factor in search.best().items():
            lo, hi = self.inputs[name][0]
            self.inputs[name] = [(lo * factor, hi * factor), *self.inputs[name][1:]]

    def _head_range_over_tokens(self, model: nn.Module, calibration: np.ndarray, batch: int) -> None:
        """Set the classifier's input range to the final norm's over every token (see
        ``Int8Scheme.head_range_over_tokens``), where the head reads the class token of it."""
        heads = [n for n in HEADS if n in self.inputs]
        norm = getattr(model, "norm", None)
        if not heads or getattr(model, "global_pool", None) != "token" or not isinstance(norm, nn.Module):
            return
        seen: list[tuple[float, float]] = []
        handle = norm.register_forward_hook(
            lambda _m, _a, out: seen.append((float(out.min()), float(out.max())))
        )
        run_calibration(model, calibration, [handle], batch)
        span = (min(lo for lo, _ in seen), max(hi for _, hi in seen))
        for name in heads:
            self.inputs[name] = [span]

    def state_dict(self) -> dict[str, Any]:
        """The activation ranges (what a resumed quantization-aware training run needs besides the
        weights)."""
        return {
            "inputs": {n: [list(r) for r in rs] for n, rs in self.inputs.items()},
            "outputs": {n: list(r) for n, r in self.outputs.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ranges :meth:`state_dict` returned."""
        self.inputs = {n: [(float(lo), float(hi)) for lo, hi in rs] for n, rs in state["inputs"].items()}
        self.outputs = {n: (float(lo), float(hi)) for n, (lo, hi) in state["outputs"].items()}

    @torch.no_grad()
    def float_state(self) -> dict[str, torch.Tensor]:
        """The float weights of the simulated model as a state dict of the model it was made from:
        trained weights without their fake quantization, SmoothQuant's scales divided back out (the
        backend applies its own). A LayerNorm folded for TFLite stays folded: the same function."""
        state = {}
        for key, value in self.model.state_dict().items():
            key = key.replace(".parametrizations.weight.original", ".weight")
            state[key] = value.clone()
        for name, weight in self._float.items():  # not trainable: the weights hold the INT8 grid
            state[f"{name}.weight"] = weight.clone()
        for name, s in self.smoothed.items():
            weight = state[f"{name}.weight"]
            state[f"{name}.weight"] = (weight.double() / s).to(weight.dtype)
        return state

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
        for name, quantized in self._quantized.items():
            weight = _weight(self.model, name)
            assert weight is not None
            weight.copy_(self._float[name] if name in names else quantized)
        self.floating_now = names


@torch.no_grad()
def simulation(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    scope: Scope = LINEAR,
    trainable: bool = False,
) -> Simulation:
    """A copy of ``model`` computing as ``scheme``'s INT8 artifact would (see the module)."""
    sim = copy.deepcopy(model).eval()
    if scheme.folds_norms:
        fold_norms(sim)
    layers = scope.layers(sim)
    smoothed: dict[str, torch.Tensor] = {}
    if scheme.smooth_alpha is not None:
        smoothed = smooth(
            sim,
            [n for n in layers if isinstance(sim.get_submodule(n), nn.Linear)],
            calibration,
            scheme.smooth_alpha,
        )
    result = Simulation(sim, scheme, layers, trainable)
    result.smoothed = smoothed
    result.recalibrate(calibration)
    return result


def simulate(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    scope: Scope = LINEAR,
) -> nn.Module:
    """A copy of ``model`` computing as ``scheme``'s INT8 artifact would (see the module)."""
    return simulation(model, scheme, calibration, scope).model
