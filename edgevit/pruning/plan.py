"""Choose what to prune to meet a MACs or parameter budget, and apply it step by step."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevit.data.stream import Batched
from edgevit.errors import RecipeError
from edgevit.models.config import ModelConfig
from edgevit.models.profile import count_macs, count_params
from edgevit.models.vit_plus import VisionTransformerPlus
from edgevit.pruning import importance, surgery
from edgevit.pruning.structure import BlockView, Geometry, Measure, as_vit_plus, blocks, head_scales
from edgevit.recipe.schema import PruneStage


@dataclass
class PruneResult:
    """The pruned model, its config, and a record of what was removed and what it saved."""

    model: VisionTransformerPlus
    config: ModelConfig
    summary: dict[str, Any] = field(default_factory=dict)


class _Infeasible(Exception):
    """Every removable unit is gone and the budget is still not met."""


@dataclass
class _Stream:
    """Removable units of one kind in one block, cheapest-to-lose first."""

    block: int
    kind: str  # "head" or "mlp"
    units: list[list[int]]  # unit = indices removed together
    costs: list[int]
    scores: list[float]
    pos: int = 0

    def priority(self) -> float:
        return self.scores[self.pos] / max(1, self.costs[self.pos])


def _measure(model: nn.Module, measure: Measure, input_size: tuple[int, int, int]) -> int:
    return count_macs(model, input_size) if measure == "macs" else count_params(model)


def _head_stream(
    blk: BlockView, b: int, scores: np.ndarray, geo: Geometry, measure: Measure, keep_min: int
) -> _Stream:
    order = [int(i) for i in np.argsort(scores, kind="stable")]
    removable = order[: max(0, blk.heads - keep_min)]
    scales = head_scales(blk.attn)
    return _Stream(
        b,
        "head",
        [[h] for h in removable],
        [geo.head_cost(scales[h], measure) for h in removable],
        [float(scores[h]) for h in removable],
    )


def _mlp_stream(
    blk: BlockView, b: int, scores: np.ndarray, geo: Geometry, measure: Measure, round_to: int
) -> _Stream:
    width = blk.width
    order = [int(i) for i in np.argsort(scores, kind="stable")]
    removable = max(0, width - max(round_to, 1))
    first = width % round_to  # the first unit brings the width to a multiple of round_to
    units: list[list[int]] = []
    start = 0
    while start < removable:
        size = first if (start == 0 and first) else round_to
        size = min(size, removable - start)
        units.append(order[start : start + size])
        start += size
    cost = geo.neuron_cost(measure)
    return _Stream(b, "mlp", units, [cost * len(u) for u in units], [float(scores[u].sum()) for u in units])


def _allocate_global(streams: list[_Stream], excess: int) -> None:
    """Remove units with the lowest score per unit of cost, across all blocks, until ``excess`` is gone."""
    heap = [(s.priority(), i) for i, s in enumerate(streams) if s.units]
    heapq.heapify(heap)
    while excess > 0 and heap:
        _, i = heapq.heappop(heap)
        s = streams[i]
        excess -= s.costs[s.pos]
        s.pos += 1
        if s.pos < len(s.units):
            heapq.heappush(heap, (s.priority(), i))
    if excess > 0:
        raise _Infeasible


def _allocate_uniform(streams: list[_Stream], excess: int) -> None:
    """Remove the same fraction of every stream (lowest scores first), the least fraction that suffices."""

    def removed(frac: float, apply: bool) -> int:
        total = 0
        for s in streams:
            n = math.ceil(frac * len(s.units) - 1e-9)
            total += sum(s.costs[:n])
            if apply:
                s.pos = n
        return total

    if removed(1.0, False) < excess:
        raise _Infeasible
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if removed(mid, False) >= excess else (mid, hi)
    removed(hi, True)


def _step(
    model: VisionTransformerPlus,
    config: ModelConfig,
    stage: PruneStage,
    scores: importance.Scores,
    goal: int,
    current: int,
    measure: Measure,
    fixed_heads: int | None,
) -> tuple[VisionTransformerPlus, ModelConfig]:
    geo = Geometry.of(model)
    heads: dict[int, list[int]] = {}
    streams: list[_Stream] = []
    excess = current - goal
    views = blocks(model)
    for b, blk in enumerate(views):
        h = blk.heads
        if fixed_heads is not None:
            drop = [int(i) for i in np.argsort(scores.heads[b], kind="stable")[:fixed_heads]]
            heads[b] = [i for i in range(h) if i not in drop]
            scales = head_scales(blk.attn)
            excess -= sum(geo.head_cost(scales[i], measure) for i in drop)
        elif stage.heads:
            streams.append(_head_stream(blk, b, scores.heads[b], geo, measure, stage.min_heads))
        if stage.mlp:
            streams.append(_mlp_stream(blk, b, scores.neurons[b], geo, measure, stage.round_to))
    if excess > 0:
        (_allocate_global if stage.allocation == "global" else _allocate_uniform)(streams, excess)
    neurons: dict[int, list[int]] = {}
    for s in streams:
        gone = {i for unit in s.units[: s.pos] for i in unit}
        if s.kind == "head":
            heads[s.block] = [i for i in range(views[s.block].heads) if i not in gone]
        else:
            neurons[s.block] = [i for i in range(views[s.block].width) if i not in gone]
    return surgery.apply(model, config, list(range(len(views))), heads, neurons)


def _check_limits(model: VisionTransformerPlus, stage: PruneStage, where: str) -> None:
    views = blocks(model)
    heads = min(b.heads for b in views)
    depth = len(views)
    if stage.remove_heads is not None and stage.remove_heads >= heads:
        raise RecipeError(
            f"{where}.remove_heads: cannot remove {stage.remove_heads} heads per block, the model has "
            f"{heads}",
            f"use at most {heads - 1}",
        )
    if stage.min_heads > heads:
        raise RecipeError(
            f"{where}.min_heads: {stage.min_heads} is more than the {heads} heads per block",
            f"use at most {heads}",
        )
    reads = getattr(model, "dense_blocks", None)
    if stage.remove_blocks and reads is not None:
        raise RecipeError(
            f"{where}.remove_blocks: the {getattr(model, 'task', 'dense')} head reads blocks "
            f"{list(reads)}, so whole blocks cannot go",
            "set remove_blocks: 0 (heads and MLP width prune as for classification)",
        )
    if stage.remove_blocks >= depth:
        raise RecipeError(
            f"{where}.remove_blocks: cannot remove {stage.remove_blocks} of {depth} blocks",
            f"use at most {depth - 1}",
        )


def prune(
    model: nn.Module,
    config: ModelConfig,
    stage: PruneStage,
    data: Batched,
    where: str = "stages[prune]",
    log: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune ``model`` to ``stage.target`` of its MACs or parameters, scored on ``data`` (calibration
    images with their labels, or a dense model's maps; in memory or streamed) by the task's loss.

    Whole blocks go first (``remove_blocks``, least loss increase when skipped), then heads and
    MLP neurons over ``stage.steps`` steps, re-scoring after each, until the budget is met.
    """
    vit = as_vit_plus(model)
    _check_limits(vit, stage, where)
    say = log or (lambda _: None)
    measure: Measure = "macs" if stage.target.macs is not None else "params"
    ratio = float(stage.target.macs if stage.target.macs is not None else stage.target.params)  # type: ignore[arg-type]
    size = config.input_size
    before = {"params": count_params(vit), "macs": count_macs(vit, size), "blocks": len(vit.blocks)}
    base = before[measure]
    summary: dict[str, Any] = {"target": {measure: ratio}, "before": before, "removed_blocks": []}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if stage.remove_blocks:
            losses = importance.block_losses(vit, data, stage.calibration_batch, config.task)
            drop = sorted(int(i) for i in np.argsort(losses, kind="stable")[: stage.remove_blocks])
            keep = [i for i in range(len(vit.blocks)) if i not in drop]
            summary["removed_blocks"] = drop
            summary["block_loss_increase"] = [round(float(v), 5) for v in losses]
            vit, config = surgery.apply(vit, config, keep, {}, {})
            lost = [round(float(losses[i]), 4) for i in drop]
            say(f"prune: removed blocks {drop} (loss increase when skipped: {lost})")
        fixed = stage.remove_heads
        for step in range(1, stage.steps + 1):
            goal = int(base * ratio ** (step / stage.steps))
            current = _measure(vit, measure, size)
            if current <= goal and fixed is None:
                continue
            scores = importance.score(vit, stage.importance, data, stage.calibration_batch, config.task)
            try:
                vit, config = _step(vit, config, stage, scores, goal, current, measure, fixed)
            except _Infeasible:
                raise RecipeError(
                    f"{where}.target: {measure} {ratio} cannot be met: every head and MLP unit these limits "
                    "allow to go is gone",
                    "raise the target, lower min_heads or round_to, enable heads/mlp, or set remove_blocks",
                ) from None
            fixed = None  # fixed head removal happens once
            say(
                f"prune: step {step}/{stage.steps}: {measure} {_measure(vit, measure, size) / base:.3f} of the original"
            )
    after = {"params": count_params(vit), "macs": count_macs(vit, size), "blocks": len(vit.blocks)}
    if after[measure] > base * ratio:
        raise AssertionError(f"pruning left {after[measure]} {measure}, above the goal {base * ratio:.0f}")
    summary.update(
        after=after,
        ratio={k: round(after[k] / before[k], 4) for k in ("params", "macs")},
        block_heads=config.model_kwargs["block_heads"],
        block_mlp=config.model_kwargs["block_mlp"],
    )
    return PruneResult(vit, config, summary)
