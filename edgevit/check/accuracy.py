"""Accuracy of an artifact's logits, and their fidelity to the float reference's logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


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


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(100.0 * np.mean(logits.argmax(axis=1) == labels)) if len(labels) else 0.0


def compare(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> AccuracyResult:
    """Score ``logits`` against labels and the reference logits of the same inputs."""
    if logits.shape != reference.shape:
        raise ValueError(f"logits {logits.shape} and reference {reference.shape} differ in shape")
    acc, ref_acc = top1(logits, labels), top1(reference, labels)
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    a, b = logits.astype(np.float64), reference.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))
    noise = float(np.sum((a - b) ** 2))
    sqnr = float("inf") if noise == 0 else float(10 * np.log10(np.sum(b**2) / noise))
    return AccuracyResult(acc, ref_acc - acc, agreement, cosine, min(sqnr, 999.0), len(labels))
