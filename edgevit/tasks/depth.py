"""Monocular depth: N x 1 x H x W depth (metres); AbsRel, δ1 and RMSE against ground truth,
AbsRel and Pearson correlation against the float model.

Pixels whose ground truth is 0 have no depth and are left out. Scores are sums over pixels taken
batch by batch, so a set's scores are exactly those of all its pixels at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgevit.scoring import MIN_DEPTH, DepthTally
from edgevit.tasks.base import GateSpec, Metric, Scorer, Task

if TYPE_CHECKING:
    import torch


class Depth(Task):
    """Per-pixel depth."""

    name = "depth"
    headline = ("absrel", "delta1", "rmse")
    metrics = (
        Metric("absrel", "AbsRel", "", "lower"),
        Metric("delta1", "δ1"),
        Metric("rmse", "RMSE", "m", "lower"),
        Metric("absrel_increase", "AbsRel increase", "", "lower"),
        Metric("absrel_vs_float", "AbsRel vs float", "", "lower"),
        Metric("pearson", "Pearson vs float"),
        Metric("sqnr_db", "SQNR", "dB"),
    )
    gates = (
        GateSpec("max_depth_absrel_vs_float", "absrel_vs_float", "max"),
        GateSpec("min_depth_pearson", "pearson", "min"),
        GateSpec("max_depth_absrel_increase", "absrel_increase", "max"),
    )
    compression_gate = GateSpec("max_compression_absrel_increase", "absrel_increase", "max")
    maps = True

    def scorer(self) -> Scorer:
        return DepthTally()

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """L1 on valid pixels, relative to the truth (AbsRel's own form, so near and far count alike)."""
        valid = targets > 0
        pred = outputs[:, 0]
        return ((pred - targets).abs()[valid] / targets[valid]).mean()

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return ((student - teacher).abs() / teacher.abs().clamp_min(MIN_DEPTH)).mean()
