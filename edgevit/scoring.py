"""Dense scores from NumPy alone: segmentation and depth outputs scored batch by batch against
ground truth and the float model's outputs.

Self-contained (NumPy and the standard library only), like ``edgevit/agent.py``, which ships it
beside itself to a device so that a dense artifact is scored there with the same code as on the
host (``edgevit.tasks`` wraps it). Sums, not means, are kept: a set's scores are exactly those of
all its pixels at once, and memory holds one batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB from summed energies (999 for no noise)."""
    if noise <= 0:
        return 999.0
    if signal <= 0:
        return -999.0
    return float(min(999.0, 10 * np.log10(signal / noise)))


def normalise(outputs: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """``outputs`` in the layout ``expected`` names (a backend may give NHWC for NCHW); raises
    ValueError naming both shapes when they cannot be matched."""
    if outputs.shape == expected:
        return outputs
    if outputs.ndim == 4 and len(expected) == 4:
        n, c, h, w = expected
        if outputs.shape == (n, h, w, c):
            return np.ascontiguousarray(outputs.transpose(0, 3, 1, 2))
    raise ValueError(f"outputs of shape {outputs.shape}, expected {tuple(expected)}")


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


class SegmentationTally:
    """Segmentation scores summed batch by batch (confusion matrices, output energies)."""

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


class DepthTally:
    """Depth scores summed batch by batch (errors, δ1 hits, moments, output energies)."""

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


RECALL_K = 5  # neighbours compared by recall@k


NEIGHBOUR_ROWS = 1024  # rows of the similarity matrix at a time: memory is N x 1024, never N x N


def _neighbours(features: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity (N x k indices, nearest first)."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    found = np.empty((len(unit), k), np.int64)
    for start in range(0, len(unit), NEIGHBOUR_ROWS):
        rows = np.arange(start, min(start + NEIGHBOUR_ROWS, len(unit)))
        sim = unit[rows] @ unit.T
        sim[np.arange(len(rows)), rows] = -np.inf  # an image is not its own neighbour
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-sim, part, axis=1).argsort(axis=1, kind="stable")
        found[rows] = np.take_along_axis(part, order, axis=1)
    return found


class EmbeddingTally:
    """Feature scores: cosine and SQNR against the float model's features, and retrieval in the set.

    Retrieval needs every feature vector at once (an image's neighbours are in the whole set), so
    this tally keeps the set's features, two N x D float64 arrays (10,000 images of 384-d features:
    61 MB), never the images; the neighbour search holds 1,024 rows of similarities at a time.
    Neighbours are by cosine similarity, an image never its own.
    """

    def __init__(self) -> None:
        self._outputs: list[np.ndarray] = []
        self._reference: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def add(self, outputs: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> None:
        """Add a batch: N x D features, N labels (the source's classes), the float model's features."""
        out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
        ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
        if out.shape != ref.shape:
            raise ValueError(f"features of shape {out.shape}, the float model's {ref.shape}")
        self._outputs.append(out)
        self._reference.append(ref)
        self._labels.append(np.asarray(targets).reshape(-1))

    def result(self) -> dict[str, Any]:
        """cosine, cosine_distance, sqnr_db; neighbour_agreement, recall_at_5 (against the float
        model's neighbours); label_recall_at_1 (an image's nearest neighbour shares its label) and
        its drop from the float model's."""
        if not self._outputs:
            return {"samples": 0}
        out, ref = np.concatenate(self._outputs), np.concatenate(self._reference)
        labels = np.concatenate(self._labels)
        norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
        cos = np.sum(out * ref, axis=1) / np.maximum(norms, 1e-12)
        scores: dict[str, Any] = {
            "cosine": float(cos.mean()),
            "cosine_distance": float(1.0 - cos.mean()),
            "sqnr_db": sqnr_db(float(np.sum(ref**2)), float(np.sum((out - ref) ** 2))),
            "samples": len(out),
        }
        k = min(RECALL_K, len(out) - 1)
        if k >= 1:
            mine, theirs = _neighbours(out, k), _neighbours(ref, k)
            overlap = [len(set(a) & set(b)) / k for a, b in zip(mine, theirs, strict=True)]
            own = float(np.mean(labels[mine[:, 0]] == labels))
            scores.update(
                {
                    "neighbour_agreement": float(np.mean(mine[:, 0] == theirs[:, 0])),
                    "recall_at_5": float(np.mean(overlap)),
                    "label_recall_at_1": 100.0 * own,
                    "label_recall_drop": 100.0 * (float(np.mean(labels[theirs[:, 0]] == labels)) - own),
                }
            )
        return scores


def tally_for(reference: Any) -> SegmentationTally | DepthTally:
    """The tally for a dense reference (N x C x H x W): segmentation for C > 1, depth for C = 1."""
    return SegmentationTally() if reference.shape[1] > 1 else DepthTally()


def rounded(scores: dict[str, float | int]) -> dict[str, float | int]:
    """Scores rounded for reports (full precision is not meaningful here)."""
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in scores.items()}
