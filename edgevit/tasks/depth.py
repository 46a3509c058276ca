"""Monocular depth: N x 1 x H x W depth (metres); AbsRel, δ1 and RMSE against ground truth,
AbsRel and Pearson correlation against the float model.

Pixels whose ground truth is 0 have no depth and are left out. Scores are sums over pixels taken
batch by batch, so a set's scores are exactly those of all its pixels at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgevit.tasks.base import GateSpec, Metric, Scorer, Task, sqnr_db

if TYPE_CHECKING:
    import torch

MIN_DEPTH = 1e-3  # predictions are clipped here before ratios (a model can predict <= 0)


class _Sums:
    """Summed AbsRel, squared error and δ1 hits of one prediction against one truth."""

    def __init__(self) -> None:
        self.absrel = self.squared = 0.0
        self.delta1 = self.pixels = 0

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        d = np.maximum(predicted, MIN_DEPTH)
        self.absrel += float(np.sum(np.abs(d - truth) / truth))
        self.squared += float(np.sum((d - truth) ** 2))
        self.delta1 += int(np.count_nonzero(np.maximum(d / truth, truth / d) < 1.25))
        self.pixels += truth.size

    def scores(self) -> tuple[float, float, float]:
        n = max(self.pixels, 1)
        return self.absrel / n, self.delta1 / n, float(np.sqrt(self.squared / n))


class _DepthScorer(Scorer):
    def __init__(self) -> None:
        self._artifact, self._reference, self._vs_float = _Sums(), _Sums(), _Sums()
        self._moments = np.zeros(5)  # sum x, y, x^2, y^2, xy over every pixel (artifact x, float y)
        self._count = 0
        self._signal = self._noise = 0.0
        self._samples = 0

    def add(self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> None:
        if outputs.shape != reference.shape or outputs.ndim != 4 or outputs.shape[1] != 1:
            raise ValueError(
                f"depth outputs {outputs.shape} and reference {reference.shape} must be the same N x 1 x H x W"
            )
        if targets.shape != (outputs.shape[0], *outputs.shape[2:]):
            raise ValueError(f"depth maps {targets.shape} do not match outputs {outputs.shape} (N x H x W)")
        a, b = outputs[:, 0].astype(np.float64), reference[:, 0].astype(np.float64)
        valid = targets > 0
        truth = targets[valid].astype(np.float64)
        self._artifact.add(a[valid], truth)
        self._reference.add(b[valid], truth)
        self._vs_float.add(a, np.maximum(b, MIN_DEPTH))
        x, y = a.ravel(), b.ravel()
        self._moments += [x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
        self._count += x.size
        self._signal += float(np.sum(b * b))
        self._noise += float(np.sum((a - b) ** 2))
        self._samples += len(outputs)

    def result(self) -> dict[str, float | int]:
        if not self._samples:
            raise ValueError("nothing was scored")
        absrel, delta1, rmse = self._artifact.scores()
        ref_absrel, ref_delta1, _ = self._reference.scores()
        n = self._count
        sx, sy, sxx, syy, sxy = self._moments
        cov, vx, vy = sxy / n - sx * sy / n**2, sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
        pearson = float(cov / np.sqrt(vx * vy)) if vx > 0 and vy > 0 else (1.0 if vx == vy == 0 else 0.0)
        return {
            "absrel": absrel,
            "absrel_increase": absrel - ref_absrel,
            "delta1": delta1,
            "delta1_drop": ref_delta1 - delta1,
            "rmse": rmse,
            "absrel_vs_float": self._vs_float.scores()[0],
            "pearson": pearson,
            "sqnr_db": sqnr_db(self._signal, self._noise),
            "samples": self._samples,
        }


class Depth(Task):
    """Per-pixel depth."""

    name = "depth"
    headline = ("absrel", "delta1", "rmse")
    metrics = (
        Metric("absrel", "AbsRel", "", "lower"),
        Metric("delta1", "δ1"),
        Metric("rmse", "RMSE", "m", "lower"),
        Metric("absrel_vs_float", "AbsRel vs float", "", "lower"),
        Metric("pearson", "Pearson vs float"),
        Metric("sqnr_db", "SQNR", "dB"),
    )
    gates = (
        GateSpec("max_depth_absrel_vs_float", "absrel_vs_float", "max"),
        GateSpec("min_depth_pearson", "pearson", "min"),
        GateSpec("max_depth_absrel_increase", "absrel_increase", "max"),
    )

    def output_shape(self, batch: int, channels: int, size: tuple[int, int]) -> tuple[int, ...]:
        return (batch, 1, *size)

    def scorer(self) -> Scorer:
        return _DepthScorer()

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """L1 on valid pixels, relative to the truth (AbsRel's own form, so near and far count alike)."""
        valid = targets > 0
        pred = outputs[:, 0]
        return ((pred - targets).abs()[valid] / targets[valid]).mean()

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return ((student - teacher).abs() / teacher.abs().clamp_min(MIN_DEPTH)).mean()
