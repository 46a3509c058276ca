"""Detections from NumPy alone: box overlap, class-wise non-maximum suppression, and how far two
detectors' outputs agree.

Self-contained (NumPy and the standard library only), like ``edgevit/scoring.py``, so that the
same NMS runs on the host and beside the profiling agent on a device (``nms: host``). Boxes are
``x0, y0, x1, y1`` in pixels (:mod:`edgevit.data.boxes`); a detection set is an N x 6 float array:
the box, its score and its class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FIELDS = 6  # x0, y0, x1, y1, score, class


def as_detections(rows: Any) -> np.ndarray:
    """``rows`` (x0, y0, x1, y1, score, class each) as a float32 N x 6 detection array."""
    return np.asarray(rows, dtype=np.float32).reshape(-1, FIELDS)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N x >=4) with every box in ``b`` (M x >=4): N x M."""
    a64, b64 = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    lo = np.maximum(a64[:, None, :2], b64[None, :, :2])
    hi = np.minimum(a64[:, None, 2:], b64[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a64[:, 2:] - a64[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b64[:, 2:] - b64[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_threshold: float = 0.6,
    score_threshold: float = 0.05,
    max_detections: int = 100,
) -> np.ndarray:
    """Class-wise greedy non-maximum suppression of one image's candidates (N x 4 boxes, N scores,
    N classes): the kept detections (N' x 6), best first. A box is dropped when a better one of its
    class overlaps it by more than ``iou_threshold``; ties in score keep the earlier candidate."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    keep_rows: list[int] = []
    candidates = np.flatnonzero(scores > score_threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    for c in np.unique(classes[order]):
        mine = order[classes[order] == c]
        while mine.size:
            best, mine = mine[0], mine[1:]
            keep_rows.append(int(best))
            if mine.size:
                mine = mine[box_iou(boxes[best : best + 1], boxes[mine])[0] <= iou_threshold]
    kept = np.array(sorted(keep_rows, key=lambda r: (-scores[r], r))[:max_detections], dtype=np.int64)
    return as_detections(np.column_stack([boxes[kept], scores[kept], classes[kept].astype(np.float32)]))


def match_detections(reference: np.ndarray, other: np.ndarray, iou_threshold: float = 0.9) -> np.ndarray:
    """For each of ``reference``'s detections (best first), the row of ``other`` it is matched to
    (-1: none): greedily, the unmatched ``other`` detection of the same class that overlaps it most,
    when that overlap is at least ``iou_threshold``."""
    reference, other = as_detections(reference), as_detections(other)
    matched = np.full(len(reference), -1, np.int64)
    if not len(reference) or not len(other):
        return matched
    overlap = box_iou(reference, other)
    overlap[reference[:, 5][:, None] != other[:, 5][None, :]] = -1.0
    taken = np.zeros(len(other), bool)
    for r in np.argsort(-reference[:, 4], kind="stable"):
        row = np.where(taken, -1.0, overlap[r])
        best = int(np.argmax(row))
        if row[best] >= iou_threshold:
            matched[r] = best
            taken[best] = True
    return matched


class AgreementTally:
    """How far a converted detector's detections agree with the float model's, image by image:
    the share of float detections it finds (same class, IoU >= ``iou_threshold``), the share of
    its own that float has, and the correlation of matched scores. Memory: three sums and the
    matched score pairs (two floats a detection)."""

    def __init__(self, iou_threshold: float = 0.9) -> None:
        self.iou_threshold = iou_threshold
        self._reference = self._other = self._matched = 0
        self._pairs: list[np.ndarray] = []

    def add(self, reference: np.ndarray, other: np.ndarray) -> None:
        """One image's float detections and the converted model's (N x 6 each)."""
        reference, other = as_detections(reference), as_detections(other)
        matched = match_detections(reference, other, self.iou_threshold)
        hit = matched >= 0
        self._reference += len(reference)
        self._other += len(other)
        self._matched += int(hit.sum())
        if hit.any():
            self._pairs.append(np.column_stack([reference[hit, 4], other[matched[hit], 4]]))

    def result(self) -> dict[str, float]:
        """box_agreement (float's detections found), box_precision (its own that float has),
        score_correlation (Pearson over matched pairs; 1.0 when the scores do not vary)."""
        pairs = np.concatenate(self._pairs) if self._pairs else np.zeros((0, 2), np.float32)
        correlation = 1.0
        if len(pairs) > 1 and pairs[:, 0].std() > 0 and pairs[:, 1].std() > 0:
            correlation = float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])
        return {
            "box_agreement": self._matched / self._reference if self._reference else 1.0,
            "box_precision": self._matched / self._other if self._other else 1.0,
            "score_correlation": correlation,
        }


def decode(
    output: np.ndarray,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
    candidates: int = 1000,
) -> np.ndarray:
    """One image's detector output (A x (4 + classes): boxes in pixels, class logits) as detections
    (N x 6): every (location, class) whose sigmoid score passes ``score_threshold``, the best
    ``candidates`` of them, through class-wise :func:`nms`."""
    output = np.asarray(output, dtype=np.float32)
    boxes, logits = output[:, :4], output[:, 4:].astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-logits))
    where, cls = np.nonzero(scores > score_threshold)
    picked = scores[where, cls]
    best = np.argsort(-picked, kind="stable")[:candidates]
    where, cls, picked = where[best], cls[best], picked[best]
    return nms(boxes[where], picked, cls, iou_threshold, score_threshold, max_detections)
