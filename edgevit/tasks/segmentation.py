"""Semantic segmentation: N x classes x H x W logits; mIoU and pixel accuracy against masks, pixel
agreement and mIoU-of-agreement against the float model.

Every score comes from confusion matrices summed batch by batch, so the scores of a set are
exactly those of all its pixels at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgevit.scoring import IGNORE, SegmentationTally
from edgevit.tasks.base import GateSpec, Metric, Scorer, Task

if TYPE_CHECKING:
    import torch


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
    compression_gate = GateSpec("max_compression_miou_drop", "miou_drop", "max")
    maps = True

    def scorer(self) -> Scorer:
        return SegmentationTally()

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
