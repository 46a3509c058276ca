"""GPTQ weight rounding onto a backend's own INT8 weight grid, folded into the float weights.

Rounding each weight to its nearest level (what every backend's quantizer does) ignores that the
errors of one output channel add up over its inputs. GPTQ (Frantar et al., 2022) rounds the input
columns one at a time and spreads each column's rounding error over the columns not yet rounded,
weighted by the inverse of the layer's input second moment ``H = E[x xᵀ]`` on the calibration
images, so the layer's *output* error is what it minimizes.

The backends quantize the exported weights themselves (per output channel: step = absmax / qmax),
so the rounded weights are written back as floats that lie exactly on that grid: every weight is
``level · step`` and each channel keeps its largest weight as it was (pinned: GPTQ rounds it to
the level the backend gives it and never moves it), so the backend computes the same step and its
round-to-nearest gives back exactly GPTQ's levels. Nothing about the artifact changes but which
levels it holds.

Grids a backend changes after export are not served: OpenVINO's SmoothQuant rescales each weight
column inside NNCF (``smooth_alpha``; turn it off with ``smooth_quant_alpha: -1``). TFLite's
converter folds each block LayerNorm's γ/β into the Linear layers after it, so for a grid with
``folds_norms`` each γ is folded first (:func:`edgevit.quant.simulate.fold_norms` without
shifts: the function and the parameters' names are unchanged, and the converter then folds ones).
Only Linear layers are rounded this way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import Scope, fold_norms, run_calibration

DAMPING = 0.01  # of the mean diagonal of H, added to it (GPTQ's percdamp)
# the inputs' second moments held at once (float64): a ViT-B's 48 Linear layers need 1.1 GB, ViT-S's 0.3
MOMENT_BYTES = 512 << 20
MIN_ROWS = 1  # calibration rows per input channel a layer needs for GPTQ (else round to nearest)
BLOCK = 128  # columns rounded per lazy batch update (GPTQ's block size; the result does not depend on it)


@dataclass(frozen=True)
class Rounded:
    """What :func:`gptq` did to a model."""

    layers: tuple[str, ...]  # the Linear layers whose weights it rounded
    # the output error each layer's weights cause on the calibration inputs, summed over the layers
    # and relative to the layers' output energy, in dB below it: round-to-nearest, then GPTQ
    nearest_db: float
    gptq_db: float
    folded_norms: tuple[str, ...] = ()
    skipped: str | None = None  # why nothing was rounded
    # layers whose input had fewer calibration rows than MIN_ROWS per input channel (a classifier
    # sees one pooled row per image): H would fit those rows, so the backend rounds them to nearest
    too_few_rows: tuple[str, ...] = ()


def served(scheme: Int8Scheme) -> str | None:
    """Why GPTQ cannot choose ``scheme``'s weight levels (None: it can)."""
    if scheme.smooth_alpha is not None:
        return (
            "OpenVINO's SmoothQuant rescales the weights after export, so their levels are NNCF's; "
            "set quantize.smooth_quant_alpha: -1 for GPTQ's"
        )
    return None


def _linear_layers(model: nn.Module, scope: Scope) -> list[str]:
    return [n for n in scope.layers(model) if isinstance(model.get_submodule(n), nn.Linear)]


@torch.no_grad()
def second_moments(
    model: nn.Module, layers: list[str], calibration: np.ndarray, batch: int = 16
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``E[x xᵀ]`` of each Linear layer's input over every token of the calibration images,
    accumulated batch by batch (float64; memory: one in x in matrix per layer), and how many
    input rows each saw."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def observe(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            product = x.T @ x
            sums[name] = product if name not in sums else sums[name].add_(product)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(observe(n)) for n in layers]
    run_calibration(model, calibration, handles, batch)
    return {n: sums[n].cpu() / counts[n] for n in layers if n in sums}, counts


def round_weight(
    weight: torch.Tensor, moment: torch.Tensor, scheme: Int8Scheme
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out x in) rounded by GPTQ onto ``scheme``'s grid for it, given its input's second
    moment ``moment`` (in x in): the rounded weights as floats on the grid (each channel's largest
    weight pinned, see the module) and their levels."""
    w = weight.detach().double().clone()
    rows, cols = w.shape
    qmax = scheme.weight_qmax
    absmax = w.abs().amax(dim=1) if scheme.per_channel else w.abs().amax().expand(rows)
    step = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    # the element(s) that set each channel's step keep their value: the backend's level for them
    pinned = torch.zeros_like(w, dtype=torch.bool)
    if scheme.per_channel:
        pinned[torch.arange(rows), w.abs().argmax(dim=1)] = True
    else:
        pinned.view(-1)[w.abs().argmax()] = True
    pinned &= absmax[:, None] > 0
    # in the backend's own arithmetic (float32): a 7-bit or unsigned maximum is a tie (63.5, 127.5 steps)
    pinned_levels = scheme.weight_codes(weight.detach())[0].reshape(rows, cols).double()
    bound = math.floor(qmax)  # never past the pinned weight: the step would change

    h = moment.double().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    h += DAMPING * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    order = torch.argsort(torch.diagonal(h), descending=True)  # GPTQ's act-order
    w, h = w[:, order], h[order][:, order]
    pin, pin_levels = pinned[:, order], pinned_levels[:, order]
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    levels = torch.zeros_like(w)
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        hinv = inverse[start:end, start:end]
        for i in range(end - start):
            column = block[:, i]
            level = torch.clamp(torch.round(column / step), -bound, bound)
            level = torch.where(pin[:, start + i], pin_levels[:, start + i], level)
            levels[:, start + i] = level
            error = (column - level * step) / hinv[i, i]
            block[:, i:] -= error[:, None] * hinv[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    back = torch.argsort(order)
    levels = levels[:, back]
    rounded = torch.where(pinned, weight.detach().double(), levels * step[:, None])
    return rounded.to(weight.dtype), levels


def output_error(weight: torch.Tensor, rounded: torch.Tensor, moment: torch.Tensor) -> float:
    """``E‖(W - Ŵ) x‖²`` over the calibration inputs whose second moment is ``moment``."""
    delta = (weight.double() - rounded.double()).to(moment.device)
    return float(torch.einsum("oi,ij,oj->", delta, moment.double(), delta))


def _groups(model: nn.Module, layers: list[str], budget: int) -> list[list[str]]:
    """``layers`` in model order, cut into groups whose second moments (float64) fit ``budget`` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in layers:
        size = 8 * cast(nn.Linear, model.get_submodule(name)).in_features ** 2
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


@torch.no_grad()
def gptq(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    scope: Scope,
    batch: int = 16,
    budget: int = MOMENT_BYTES,
) -> Rounded:
    """Round the weights of ``model``'s Linear layers in ``scope`` onto ``scheme``'s grid with GPTQ,
    in place (norms folded first for a grid with ``folds_norms``); the inputs' statistics are the
    float model's on ``calibration``, gathered for as many layers per pass as ``budget`` bytes hold."""
    why = served(scheme)
    if why is not None:
        return Rounded((), 0.0, 0.0, skipped=why)
    folded = tuple(fold_norms(model, shifts=False)) if scheme.folds_norms else ()
    layers = _linear_layers(model, scope)
    groups = _groups(model, layers, budget)
    source = copy.deepcopy(model) if len(groups) > 1 else model  # the float model's inputs throughout
    energy = nearest = rounded_error = 0.0
    few: list[str] = []
    for group in groups:
        moments, counts = second_moments(source, group, calibration, batch)
        for name in group:
            linear = cast(nn.Linear, model.get_submodule(name))
            moment = moments.pop(name)
            weight = linear.weight.detach().cpu().clone()
            to_nearest = scheme.quantize_weight(weight)
            if counts[name] < MIN_ROWS * linear.in_features:
                few.append(name)  # e.g. a classifier on one pooled row per image: left to the backend
                rounded = to_nearest
            else:
                rounded, _ = round_weight(weight, moment, scheme)
                linear.weight.copy_(rounded.to(linear.weight.device))
            energy += output_error(weight, torch.zeros_like(weight), moment)
            nearest += output_error(weight, to_nearest, moment)
            rounded_error += output_error(weight, rounded, moment)
    done = tuple(n for n in layers if n not in few)
    return Rounded(done, _db(energy, nearest), _db(energy, rounded_error), folded, too_few_rows=tuple(few))


def _db(signal: float, noise: float) -> float:
    return round(10 * math.log10(signal / noise), 2) if noise > 0 and signal > 0 else float("inf")
