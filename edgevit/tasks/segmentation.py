"""Semantic segmentation: N x classes x H x W logits; mIoU and pixel accuracy against masks, pixel
agreement and mIoU-of-agreement against the float model.

Every score comes from confusion matrices summed batch by batch, so the scores of a set are
exactly those of all its pixels at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgevit.tasks.base import GateSpec, Metric, Scorer, Task, sqnr_db

if TYPE_CHECKING:
    import torch

IGNORE = 255  # a mask value that no score counts (unlabelled pixels)


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """classes x classes pixel counts (row: truth, column: prediction), IGNORE pixels left out."""
    keep = truth != IGNORE
    t, p = truth[keep].astype(np.int64), predicted[keep].astype(np.int64)
    if t.size and (t.max() >= classes or t.min() < 0):
        raise ValueError(f"mask values must be below {classes} (or {IGNORE}), found {int(t.max())}")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def miou(matrix: np.ndarray) -> float:
    """Mean intersection over union (%) over the classes that occur in truth or prediction."""
    inter = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - inter
    seen = union > 0
    return float(100 * np.mean(inter[seen] / union[seen])) if seen.any() else 0.0


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Correct pixels (%)."""
    total = matrix.sum()
    return float(100 * np.trace(matrix) / total) if total else 0.0


class _SegmentationScorer(Scorer):
    def __init__(self) -> None:
        self._classes = 0
        self._vs_truth: np.ndarray | None = None
        self._ref_vs_truth: np.ndarray | None = None
        self._vs_ref: np.ndarray | None = None
        self._signal = self._noise = 0.0
        self._samples = 0

    def add(self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> None:
        if outputs.shape != reference.shape or outputs.ndim != 4:
            raise ValueError(
                f"segmentation outputs {outputs.shape} and reference {reference.shape} must be the same N x C x H x W"
            )
        if targets.shape != (outputs.shape[0], *outputs.shape[2:]):
            raise ValueError(f"masks {targets.shape} do not match outputs {outputs.shape} (N x H x W)")
        c = outputs.shape[1]
        if self._vs_truth is None:
            self._classes = c
            self._vs_truth, self._ref_vs_truth, self._vs_ref = (np.zeros((c, c), np.int64) for _ in range(3))
        assert self._ref_vs_truth is not None and self._vs_ref is not None
        pred, ref = outputs.argmax(1), reference.argmax(1)
        self._vs_truth += confusion(pred, targets, c)
        self._ref_vs_truth += confusion(ref, targets, c)
        self._vs_ref += confusion(pred, ref, c)
        a, b = outputs.astype(np.float64), reference.astype(np.float64)
        self._signal += float(np.sum(b * b))
        self._noise += float(np.sum((a - b) ** 2))
        self._samples += len(outputs)

    def result(self) -> dict[str, float | int]:
        if self._vs_truth is None or self._ref_vs_truth is None or self._vs_ref is None:
            raise ValueError("nothing was scored")
        score, ref_score = miou(self._vs_truth), miou(self._ref_vs_truth)
        return {
            "miou": score,
            "miou_drop": ref_score - score,
            "pixel_accuracy": pixel_accuracy(self._vs_truth),
            "pixel_agreement": pixel_accuracy(self._vs_ref) / 100,
            "miou_vs_float": miou(self._vs_ref),
            "sqnr_db": sqnr_db(self._signal, self._noise),
            "samples": self._samples,
        }


class Segmentation(Task):
    """Per-pixel classes."""

    name = "segmentation"
    headline = ("miou", "pixel_accuracy")
    metrics = (
        Metric("miou", "mIoU", "%"),
        Metric("miou_drop", "mIoU drop", "points", "lower"),
        Metric("pixel_accuracy", "pixel acc", "%"),
        Metric("pixel_agreement", "pixel agreement"),
        Metric("miou_vs_float", "mIoU vs float", "%"),
        Metric("sqnr_db", "SQNR", "dB"),
    )
    gates = (
        GateSpec("max_miou_drop", "miou_drop", "max"),
        GateSpec("min_pixel_agreement", "pixel_agreement", "min"),
    )

    def output_shape(self, batch: int, channels: int, size: tuple[int, int]) -> tuple[int, ...]:
        return (batch, channels, *size)

    def scorer(self) -> Scorer:
        return _SegmentationScorer()

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(outputs, targets, ignore_index=IGNORE, label_smoothing=label_smoothing)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        import torch.nn.functional as F

        t = temperature  # per-pixel KL, averaged over pixels
        kl = F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="none",
            log_target=True,
        )
        return kl.sum(1).mean() * (t * t)
