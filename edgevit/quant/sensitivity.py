"""Which quantized layers cost a target most: the ranking the accuracy-budget search walks.

Three ways, from cheapest to dearest:

- ``simulated``: one torch model of the target's INT8 grid (:mod:`edgevit.quant.simulate`); each
  quantized layer is switched back to float in turn and ranked by the logit SQNR that gains on the
  calibration images. No build; one forward pass over the ranking images per layer.
- ``measured``: the same, but with the real backend: one build of the target per layer.
- ``alone``: the layer-wise comparison's SQNR of each layer run alone (no propagation).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevit.check.layerwise import sqnr_db
from edgevit.models.load import logits_of
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import LINEAR, Scope, simulation

BATCH = 64


@dataclass(frozen=True)
class Ranking:
    """Quantized layers, most sensitive first, as the report lists them."""

    method: str  # simulated | measured | alone
    layers: list[dict[str, Any]]  # {"layer", "gain_db" (simulated/measured), "local_sqnr_db"?}
    base_sqnr_db: float | None = None  # all layers quantized, on the ranking images
    note: str | None = None  # e.g. why another method than the recipe's was used

    @property
    def names(self) -> list[str]:
        return [x["layer"] for x in self.layers]


def _by_gain(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(found, key=lambda x: -float(x["gain_db"]))


def _block_of(name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) if match else None


@torch.no_grad()
def _from_block(model: nn.Module, block: int, cached: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` computed from block ``block`` on, given that block's input ``cached``: the
    blocks before it are skipped (identity) and its input replaced, since they compute the same
    as in the run that cached it."""
    blocks = model.blocks
    assert isinstance(blocks, nn.Sequential | nn.ModuleList)
    saved = [blocks[j] for j in range(block)]
    for j in range(block):
        blocks[j] = nn.Identity()
    handle = blocks[block].register_forward_pre_hook(lambda _m, a: (cached, *a[1:]))
    try:
        return model(x)
    finally:
        handle.remove()
        for j, module in enumerate(saved):
            blocks[j] = module


@torch.no_grad()
def simulated(
    model: nn.Module,
    scheme: Int8Scheme,
    calibration: np.ndarray,
    images: np.ndarray,
    scope: Scope = LINEAR,
    batch: int = 32,
) -> Ranking:
    """Rank the layers ``scheme``'s INT8 quantizes in ``model`` (the float model the target
    lowers) by the simulated logit SQNR gained on ``images`` when each alone stays float.

    Batch by batch, the all-INT8 run keeps each block's input; a layer inside block ``b`` is then
    scored by running from block ``b`` on (the blocks before it compute the same), which halves
    the work on average."""
    sim = simulation(model, scheme, calibration, scope)
    reference = logits_of(model.eval(), images, BATCH)
    found_blocks = getattr(sim.model, "blocks", None)
    blocks = list(found_blocks) if isinstance(found_blocks, nn.Sequential | nn.ModuleList) else []
    quantized: list[np.ndarray] = []
    floated: dict[str, list[np.ndarray]] = {name: [] for name in sim.layers}
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch])
        inputs: list[torch.Tensor] = []
        handles = [b.register_forward_pre_hook(lambda _m, a, keep=inputs: keep.append(a[0])) for b in blocks]
        try:
            quantized.append(sim.model(x).numpy())
        finally:
            for h in handles:
                h.remove()
        for name in sim.layers:
            block = _block_of(name) if len(inputs) == len(blocks) else None  # each block ran once
            with sim.floating([name]) as m:
                out = m(x) if not block else _from_block(m, block, inputs[block], x)
            floated[name].append(out.numpy())
    base = sqnr_db(reference, np.concatenate(quantized))
    found = [
        {"layer": name, "gain_db": round(sqnr_db(reference, np.concatenate(parts)) - base, 3)}
        for name, parts in floated.items()
    ]
    return Ranking("simulated", _by_gain(found), round(base, 3))


def measured(
    layers: dict[str, float | None],
    reference: np.ndarray,
    quantized: np.ndarray,
    with_float: Callable[[int, str], np.ndarray],
) -> Ranking:
    """Rank ``layers`` (name → local SQNR or None) by the logit SQNR against ``reference`` that
    building the target with each alone float gains over ``quantized`` (all layers INT8):
    ``with_float(i, name)`` builds that candidate and returns its logits on the same images."""
    base = sqnr_db(reference, quantized)
    found = []
    for i, (name, local) in enumerate(sorted(layers.items(), key=lambda kv: kv[1] or 0.0)):
        gained = sqnr_db(reference, with_float(i, name)) - base
        found.append({"layer": name, "gain_db": round(gained, 3), "local_sqnr_db": local})
    return Ranking("measured", _by_gain(found), round(base, 3))


def alone(layers: dict[str, float | None]) -> Ranking:
    """Rank ``layers`` by their SQNR run alone, worst first."""
    by_local = sorted(layers.items(), key=lambda kv: kv[1] or 0.0)
    return Ranking("alone", [{"layer": k, "local_sqnr_db": v} for k, v in by_local])
