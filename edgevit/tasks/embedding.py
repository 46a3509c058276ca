"""Embedding: a headless model's N x D features, scored against the float model's features.

A backbone (DINOv2, CLIP, MAE as they ship) has no classes to be right about: what a user keeps
is its features. They are scored by cosine and SQNR against the float features, and by retrieval
inside the evaluation set: whether each image's nearest neighbour is still float's, and how many
of float's 5 nearest neighbours are still among its 5 (recall@5). Against ground truth, the labels
of the source (an image folder's classes, the photo a crop came from) give the share of images
whose nearest neighbour has the same label. A linear probe (``edgevit train`` on frozen features)
makes a classifier of it where there are labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgevit.errors import RecipeError
from edgevit.scoring import EmbeddingTally
from edgevit.tasks.base import GateSpec, Metric, Scorer, Task

if TYPE_CHECKING:
    import torch


class Embedding(Task):
    """Image features (a headless model)."""

    name = "embedding"
    headline = ("label_recall_at_1",)
    metrics = (
        Metric("label_recall_at_1", "label recall@1", "%"),
        Metric("label_recall_drop", "label recall@1 drop", "points", "lower"),
        Metric("cosine", "cosine"),
        Metric("sqnr_db", "feature SQNR", "dB"),
        Metric("neighbour_agreement", "neighbour agreement"),
        Metric("recall_at_5", "recall@5 vs float"),
        Metric("cosine_distance", "1 - cosine", "", "lower"),
    )
    gates = (
        GateSpec("min_embedding_sqnr_db", "sqnr_db", "min"),
        GateSpec("min_embedding_cosine", "cosine", "min"),
        GateSpec("min_neighbour_agreement", "neighbour_agreement", "min"),
        GateSpec("min_recall_at_5", "recall_at_5", "min"),
    )
    compression_gate = GateSpec("max_compression_cosine_distance", "cosine_distance", "max")

    def scorer(self) -> Scorer:
        return EmbeddingTally()

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        raise RecipeError(
            "an embedding model has no labels to train against",
            "distill it from its float reference with alpha: 1.0, or train a linear probe on its "
            "features (edgevit train --init-checkpoint with a classifier head)",
        )

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """Mean squared error relative to the teacher's feature energy, plus the cosine distance:
        the scale and the direction of the features, as they are scored."""
        import torch.nn.functional as F

        s, t = student.float().flatten(1), teacher.float().flatten(1)
        mse = ((s - t) ** 2).sum() / (t**2).sum().clamp_min(1e-12)
        return mse + (1 - F.cosine_similarity(s, t, dim=1)).mean()
