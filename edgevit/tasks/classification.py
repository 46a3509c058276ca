"""Image classification: N x classes logits, top-1 against labels, agreement and SQNR against the float model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgevit.tasks.base import GateSpec, Metric, Scorer, Task

if TYPE_CHECKING:
    import torch


class _ClassificationScorer(Scorer):
    """Holds the logits (N x classes is small) and scores them with the agent's own code."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> None:
        self._parts.append((outputs, targets, reference))

    def result(self) -> dict[str, float | int]:
        from edgevit.agent import fidelity  # the agent scores device runs with the same code

        if not self._parts:
            raise ValueError("nothing was scored")
        logits, labels, reference = (np.concatenate(p) for p in zip(*self._parts, strict=True))
        return dict(fidelity(logits, labels, reference))


class Classification(Task):
    """Top-1 and, against the float model, top-1 agreement, logit cosine and SQNR."""

    name = "classification"
    headline = ("top1",)
    metrics = (
        Metric("top1", "top-1", "%"),
        Metric("top1_drop", "top-1 drop", "points", "lower"),
        Metric("agreement", "agreement"),
        Metric("cosine", "cosine"),
        Metric("sqnr_db", "SQNR", "dB"),
    )
    gates = (
        GateSpec("max_top1_drop", "top1_drop", "max"),
        GateSpec("min_agreement", "agreement", "min"),
        GateSpec("min_cosine", "cosine", "min"),
    )
    compression_gate = GateSpec("max_compression_top1_drop", "top1_drop", "max")

    def scorer(self) -> Scorer:
        return _ClassificationScorer()

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        import torch.nn.functional as F

        t = temperature
        return F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
