"""What a task is: how its outputs are laid out, scored, gated, reported and trained.

A task's scores are sums over images (a :class:`Scorer` takes a batch at a time), so scoring
thousands of 224-px segmentation maps holds one batch, never the set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike

from edgevit import scoring

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Metric:
    """One number a task reports: its key, a column header, its unit, and which way is better."""

    key: str
    header: str
    unit: str = ""
    better: Literal["higher", "lower"] = "higher"


@dataclass(frozen=True)
class GateSpec:
    """A gate a task offers: the recipe's gate name, the metric it limits, max or min."""

    name: str
    key: str
    kind: Literal["max", "min"]


class Scorer(Protocol):
    """Scores an artifact's outputs batch by batch against ground truth and the float reference
    (edgevit.scoring's tallies are scorers: they ship to devices without this module)."""

    def add(self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> None:
        """Add one batch: the artifact's outputs, the ground truth, the float model's outputs."""

    def result(self) -> dict[str, float | int]:
        """The scores of every batch added (JSON-ready)."""


class Task(ABC):
    """A task (classification, segmentation, depth): everything the pipeline asks of one."""

    name: ClassVar[str]
    headline: ClassVar[tuple[str, ...]]  # the scores against ground truth that training logs
    metrics: ClassVar[tuple[Metric, ...]]
    gates: ClassVar[tuple[GateSpec, ...]]
    compression_gate: ClassVar[GateSpec]  # limits what prune/distill may lose against the reference
    maps: ClassVar[bool] = False  # outputs are per-pixel maps (report.html pictures them)

    @abstractmethod
    def scorer(self) -> Scorer:
        """A fresh scorer."""

    @abstractmethod
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """The training loss against ground truth (a mean over the batch)."""

    @abstractmethod
    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """The loss that pulls the student's outputs towards the teacher's."""

    def normalise(self, outputs: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
        """``outputs`` in the layout ``expected`` names (a backend may give NHWC for NCHW);
        raises ValueError naming both shapes when they cannot be matched."""
        return scoring.normalise(outputs, expected)

    def score(
        self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray
    ) -> dict[str, float | int]:
        """Score one set at once, rounded for reports (full precision is not meaningful here)."""
        scorer = self.scorer()
        scorer.add(outputs, targets, reference)
        return scoring.rounded(scorer.result())

    def summary(self, scores: dict[str, float | int]) -> str:
        """The scores as a log line's words (every metric, in the task's order)."""
        parts = []
        for m in self.metrics:
            if m.key in scores:
                value = float(scores[m.key])
                unit = "%" if m.unit == "%" else (f" {m.unit}" if m.unit and m.unit != "points" else "")
                parts.append(f"{m.header} {value:{'+.2f' if m.unit == 'points' else '.4g'}}{unit}")
        return ", ".join(parts)


def score_batches(
    task: Task, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> dict[str, float | int]:
    """Score (outputs, ground truth, reference) batches as one set, rounded like ``Task.score``;
    outputs a backend laid out channels-last are normalised to the reference's layout."""
    scorer = task.scorer()
    for outputs, truth, reference in batches:
        scorer.add(
            task.normalise(np.asarray(outputs), np.asarray(reference).shape),
            np.asarray(truth),
            np.asarray(reference),
        )
    return scoring.rounded(scorer.result())


def score_run(
    task: Task,
    run: Callable[[np.ndarray], np.ndarray],
    x: ArrayLike,
    truth: ArrayLike,
    reference: ArrayLike,
    batch: int,
) -> tuple[dict[str, float | int], np.ndarray]:
    """Run ``x`` through ``run`` ``batch`` images at a time and score each batch as it comes (the
    inputs, ground truth and reference may be read by slices, e.g. from a bundle): the scores and
    the first image's output (normalised), never the set's outputs at once."""
    first: list[np.ndarray] = []

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for i in range(0, len(x), batch):  # type: ignore[arg-type]
            ref = np.asarray(reference[i : i + batch])  # type: ignore[index]
            out = run(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))  # type: ignore[index]
            if not first:
                first.append(task.normalise(np.asarray(out), ref.shape)[0])
            yield out, np.asarray(truth[i : i + batch]), ref  # type: ignore[index]

    scores = score_batches(task, batches())
    return scores, first[0]
