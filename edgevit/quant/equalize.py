"""SmoothQuant-style equalization folded into the float model: no op added, the function kept.

Per-tensor INT8 of a LayerNorm output with a few channels tens of times larger than the rest
spends almost every level on those channels. Dividing channel ``j`` of the activation by
``s_j = a_j**alpha / w_j**(1 - alpha)`` (``a_j``: its calibrated absolute maximum; ``w_j``: the
largest weight that multiplies it) and multiplying the consuming weights' input column ``j`` by
``s_j`` moves range from activations into weights, where quantization is per output channel.
Both sides are folded into existing parameters: LayerNorm γ/β for ``norm1 → qkv``, ``norm2 →
fc1`` and the final norm → head, and the value rows of ``qkv`` for ``v → proj`` (attention and
its key/value pooling are linear in ``v``). Because the exported ONNX carries it, every backend
gets it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgevit.check.layerwise import sqnr_db
from edgevit.models.load import logits_of
from edgevit.quant.outliers import outlier_pairs
from edgevit.quant.rotate import rotate as rotate_model
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import LINEAR, Scope, channel_absmax, simulate

BATCH = 64  # images per forward pass while choosing a strength: memory stays bounded
# An alpha must beat no equalization by this much (simulated logit SQNR on the calibration images,
# which also set the ranges, so small wins there are optimistic): on digits, OpenVINO's 0.9 won by
# 0.55 dB there and lost 0.5 dB on the test images. On outlier models the wins are ~20 dB.
MARGIN_DB = 1.0


@dataclass(frozen=True)
class EqualizedPair:
    """One producer → consumers pair and what was folded into it."""

    producer: str  # a LayerNorm, or ``<attn>.qkv[v]`` for the value rows
    consumers: tuple[str, ...]
    scale_min: float
    scale_max: float


def _pairs(model: nn.Module) -> list[tuple[str, tuple[str, ...], str]]:
    """(producer, consumers, where the consumers' input is observed) for every foldable pair."""
    found = [(p.norm, p.linears, p.linears[0]) for p in outlier_pairs(model)]
    for i, block in enumerate(getattr(model, "blocks", [])):
        attn = getattr(block, "attn", None)
        if (
            isinstance(getattr(attn, "qkv", None), nn.Linear)
            and isinstance(getattr(attn, "proj", None), nn.Linear)
            and isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity)
        ):
            proj = f"blocks.{i}.attn.proj"
            found.append((f"blocks.{i}.attn.qkv[v]", (proj,), proj))
    return found


def activation_stats(model: nn.Module, calibration: np.ndarray) -> dict[str, torch.Tensor]:
    """The per-channel input maxima equalization scales from, for every foldable pair's consumer."""
    return channel_absmax(model, sorted({observed for _, _, observed in _pairs(model)}), calibration)


@torch.no_grad()
def equalize(
    model: nn.Module,
    calibration: np.ndarray,
    alpha: float,
    stats: dict[str, torch.Tensor] | None = None,
) -> list[EqualizedPair]:
    """Fold SmoothQuant scales of strength ``alpha`` (0: none, 1: all range into weights) into
    ``model`` in place, calibrated on ``calibration``; return what was folded where. ``stats``:
    :func:`activation_stats` of the same (unequalized) model, when the caller already has them."""
    pairs = _pairs(model)
    if stats is None:
        stats = activation_stats(model, calibration)
    done = []
    for producer, consumers, observed in pairs:
        linears: list[nn.Linear] = []
        for name in consumers:
            lin = model.get_submodule(name)
            assert isinstance(lin, nn.Linear)
            linears.append(lin)
        w = torch.stack([lin.weight.abs().amax(dim=0).double() for lin in linears]).amax(dim=0)
        a = stats[observed]
        scale = (a.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        scale = torch.where((a > 0) & (w > 0), scale, torch.ones_like(scale))
        if producer.endswith("qkv[v]"):
            qkv = model.get_submodule(producer.removesuffix("[v]"))
            assert isinstance(qkv, nn.Linear)
            width = scale.numel()
            rows = slice(2 * width, 3 * width)
            qkv.weight[rows] = (qkv.weight[rows].double() / scale[:, None]).to(qkv.weight.dtype)
            if qkv.bias is not None:
                qkv.bias[rows] = (qkv.bias[rows].double() / scale).to(qkv.bias.dtype)
        else:
            norm = model.get_submodule(producer)
            assert isinstance(norm, nn.LayerNorm) and norm.weight is not None
            norm.weight.copy_((norm.weight.double() / scale).to(norm.weight.dtype))
            if norm.bias is not None:
                norm.bias.copy_((norm.bias.double() / scale).to(norm.bias.dtype))
        for lin in linears:
            lin.weight.copy_((lin.weight.double() * scale).to(lin.weight.dtype))
        done.append(EqualizedPair(producer, consumers, float(scale.min()), float(scale.max())))
    return done


ROTATE = "rotate"  # the candidate that folds edgevit.quant.rotate's rotations instead of scales


@dataclass(frozen=True)
class AlphaChoice:
    """The strength chosen for one INT8 scheme (and whether to rotate first), and the simulated
    logit SQNR of each candidate."""

    alpha: float | None  # None: no scales (off, or the rotation alone, measured best)
    sqnr_db: dict[str, float]  # candidate ("off", "0.5", ..., "rotate") -> simulated SQNR on calibration
    rotate: bool = False
    rotate_seed: int = 0  # the rotation (edgevit.quant.rotate's seed) the "rotate" candidate used


def rotation_key(seed: int) -> str:
    """The candidate name of the rotation with ``seed``: ``rotate``, ``rotate@1``, ..."""
    return ROTATE if seed == 0 else f"{ROTATE}@{seed}"


def _scorer(
    model: nn.Module, scheme: Int8Scheme, calibration: np.ndarray, scope: Scope
) -> Callable[[nn.Module], float]:
    """The simulated INT8 logit SQNR of a candidate (a folded copy of ``model``) against ``model``'s
    float outputs on the calibration images."""
    reference = logits_of(model.eval(), calibration, BATCH)

    def score(candidate: nn.Module) -> float:
        simulated = simulate(candidate, scheme, calibration, scope)
        return sqnr_db(reference, logits_of(simulated, calibration, BATCH))

    return score


def _rotation_scores(model: nn.Module, score: Callable[[nn.Module], float], seeds: int) -> dict[str, float]:
    """``score`` of ``model`` rotated with each of seeds 0..``seeds``-1, by candidate name."""
    scores = {}
    for seed in range(seeds):
        candidate = copy.deepcopy(model)
        rotate_model(candidate, seed=seed)
        scores[rotation_key(seed)] = score(candidate)
    return scores


@torch.no_grad()
def choose_alpha(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    alphas: tuple[float, ...] = (0.5, 0.75, 0.9),
    scope: Scope = LINEAR,
    rotate: bool = False,
    seeds: int = 1,
) -> AlphaChoice:
    """The strength (or none) whose simulated INT8 model is closest to the float one on the
    calibration images, none unless a strength wins by ``MARGIN_DB``: what SmoothQuant's alpha
    sweep does, without a build per candidate. With ``rotate``, the rotated model
    (:func:`edgevit.quant.rotate.rotate`, the best of ``seeds`` random rotations) is one more
    candidate, under the same margin. ``scope``: the target's, as in the recipe."""
    score = _scorer(model, scheme, calibration, scope)
    scores = {"off": score(model)}
    stats = activation_stats(model, calibration)  # of the unequalized model: the same for every alpha
    for alpha in alphas:
        candidate = copy.deepcopy(model)
        equalize(candidate, calibration, alpha, stats)
        scores[f"{alpha:g}"] = score(candidate)
    rotations = {rotation_key(seed): seed for seed in range(seeds)} if rotate else {}
    if rotate:
        scores.update(_rotation_scores(model, score, seeds))
    best = max(scores, key=lambda k: scores[k])
    if scores[best] < scores["off"] + MARGIN_DB:
        best = "off"  # a gain this small on the calibration images does not carry to other images
    chosen = None if best == "off" or best in rotations else float(best)
    rounded = {k: round(v, 2) for k, v in scores.items()}
    return AlphaChoice(chosen, rounded, best in rotations, rotations.get(best, 0))


@torch.no_grad()
def best_rotation(
    model: nn.Module, scheme: Int8Scheme, calibration: np.ndarray, scope: Scope = LINEAR, seeds: int = 1
) -> tuple[int, dict[str, float]]:
    """The seed of the rotation whose simulated INT8 model is closest to the float one on the
    calibration images, and each seed's simulated SQNR (``rotate: on``: rotated whatever it costs)."""
    if seeds == 1:
        return 0, {}
    scores = _rotation_scores(model, _scorer(model, scheme, calibration, scope), seeds)
    best = max(range(seeds), key=lambda s: scores[rotation_key(s)])
    return best, {k: round(v, 2) for k, v in scores.items()}
