"""Object detection: N x A x (4 + classes) detector outputs (boxes in input pixels, class logits:
:mod:`edgevit.models.detect`), decoded and suppressed (:func:`edgevit.detections.decode`), then
scored by COCO mAP against the labelled boxes and by box agreement against the float model.

Ground truth comes as N x MAX_BOXES x 5 padded boxes (:func:`edgevit.data.transforms.preprocess_boxes`).
What a scorer holds is each image's boxes and detections (at most 100 an image), never outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgevit.detections import AgreementTally, decode
from edgevit.scoring import sqnr_db
from edgevit.tasks.base import GateSpec, Metric, Scorer, Task
from edgevit.tasks.coco_map import MapTally
from edgevit.tasks.detection_loss import detection_loss

if TYPE_CHECKING:
    import torch


class DetectionTally:
    """mAP of the artifact's and the float model's detections against the labelled boxes, their
    agreement, and the raw outputs' SQNR, image by image."""

    def __init__(self) -> None:
        self._artifact: MapTally | None = None
        self._reference: MapTally | None = None
        self._agreement = AgreementTally()
        self._signal = self._noise = 0.0
        self._samples = 0

    def add(self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> None:
        if outputs.shape != reference.shape or outputs.ndim != 3 or outputs.shape[2] < 5:
            raise ValueError(
                f"detection outputs {outputs.shape} and reference {reference.shape} must be the same "
                "N x locations x (4 + classes)"
            )
        if targets.ndim != 3 or targets.shape[0] != outputs.shape[0] or targets.shape[2] != 5:
            raise ValueError(f"boxes {targets.shape} do not match outputs {outputs.shape} (N x boxes x 5)")
        if self._artifact is None or self._reference is None:
            names = [f"class {k}" for k in range(outputs.shape[2] - 4)]
            self._artifact, self._reference = MapTally(names), MapTally(names)
        for out, truth, ref in zip(outputs, targets, reference, strict=True):
            labelled = truth[truth[:, 4] >= 0]
            found, expected = decode(out), decode(ref)
            self._artifact.add(labelled, found)
            self._reference.add(labelled, expected)
            self._agreement.add(expected, found)
        a, b = outputs.astype(np.float64), reference.astype(np.float64)
        self._signal += float(np.sum(b * b))
        self._noise += float(np.sum((a - b) ** 2))
        self._samples += len(outputs)

    def result(self) -> dict[str, float | int]:
        if self._artifact is None or self._reference is None:
            return {"samples": 0}
        mine, theirs = self._artifact.result(), self._reference.result()
        return {
            "map": mine["map"],
            "map50": mine["map50"],
            "map_drop": theirs["map"] - mine["map"],
            "float_map": theirs["map"],
            **self._agreement.result(),
            "sqnr_db": sqnr_db(self._signal, self._noise),
            "samples": self._samples,
        }


class Detection(Task):
    """Boxes and classes of objects."""

    name = "detection"
    headline = ("map", "map50")
    metrics = (
        Metric("map", "mAP", "%"),
        Metric("map_drop", "mAP drop", "points", "lower"),
        Metric("map50", "mAP50", "%"),
        Metric("box_agreement", "box agreement"),
        Metric("score_correlation", "score corr"),
        Metric("sqnr_db", "SQNR", "dB"),
    )
    gates = (
        GateSpec("max_map_drop", "map_drop", "max"),
        GateSpec("min_box_agreement", "box_agreement", "min"),
    )
    compression_gate = GateSpec("max_compression_map_drop", "map_drop", "max")

    def scorer(self) -> Scorer:
        return DetectionTally()

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        return detection_loss(outputs, targets)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        import torch.nn.functional as F

        boxes = (student[..., :4] - teacher[..., :4]).abs().mean() / teacher[..., :4].abs().mean().clamp_min(
            1e-6
        )
        t = temperature
        classes = F.binary_cross_entropy_with_logits(student[..., 4:] / t, (teacher[..., 4:] / t).sigmoid())
        return boxes + classes * (t * t)
