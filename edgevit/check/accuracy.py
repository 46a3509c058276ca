"""Accuracy of an artifact's logits, and their fidelity to the float reference's logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class AccuracyResult:
    """top1 (%), top1_drop (points vs reference), agreement (fraction), cosine, sqnr_db."""

    top1: float
    top1_drop: float
    agreement: float
    cosine: float
    sqnr_db: float
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready, rounded for people (full precision is not meaningful here)."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def top1(logits: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in percent."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    return float(100.0 * np.mean(logits.argmax(axis=1) == labels)) if len(labels) else 0.0


def compare(logits: ArrayLike, labels: ArrayLike, reference: ArrayLike) -> AccuracyResult:
    """Score ``logits`` against labels and the reference logits of the same inputs."""
    from edgevit.agent import fidelity  # the agent scores device runs with the same code

    return from_dict(fidelity(np.asarray(logits), np.asarray(labels), np.asarray(reference)))


def from_dict(scores: dict[str, float | int]) -> AccuracyResult:
    """An AccuracyResult from its dict (e.g. the profiling agent's ``accuracy`` from a device)."""
    return AccuracyResult(
        float(scores["top1"]),
        float(scores["top1_drop"]),
        float(scores["agreement"]),
        float(scores["cosine"]),
        float(scores["sqnr_db"]),
        int(scores["samples"]),
    )
