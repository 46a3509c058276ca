"""The embedding task's scores against a hand computation, and its place among the tasks."""

from __future__ import annotations

import numpy as np
import pytest

from edgevit.errors import RecipeError
from edgevit.tasks import TASKS
from edgevit.tasks.base import score_batches


def _unit(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], 1)


def test_scores_match_a_hand_computation() -> None:
    # float features at 0, 10, 80 and 90 degrees: neighbours 0<->1 and 2<->3, labels agree
    ref = _unit([0, 10, 80, 90]) * np.array([[1.0], [2.0], [1.0], [1.0]])
    # the artifact moves image 1 to 84 degrees: by hand, its neighbours are 0->2, 1->2, 2->1, 3->1
    out = _unit([0, 84, 80, 90]) * np.array([[1.0], [2.0], [1.0], [1.0]])
    labels = np.array([0, 0, 1, 1])
    scores = TASKS.get("embedding").score(out, labels, ref)
    cosine = (3 + np.cos(np.deg2rad(74))) / 4
    assert scores["cosine"] == pytest.approx(cosine, abs=1e-6)
    assert scores["cosine_distance"] == pytest.approx(1 - cosine, abs=1e-6)
    noise = 4 * np.sum((_unit([84]) - _unit([10])) ** 2)
    assert scores["sqnr_db"] == pytest.approx(10 * np.log10(7 / noise), abs=1e-4)
    assert scores["neighbour_agreement"] == 0.0  # float: 0->1, 1->0, 2->3, 3->2
    assert scores["label_recall_at_1"] == 0.0  # every artifact neighbour has the other label
    assert scores["label_recall_drop"] == 100.0  # float's neighbours all share the label
    # k = 3 (4 images): float 0's 3 neighbours are everyone else, as are the artifact's
    assert scores["recall_at_5"] == 1.0
    assert scores["samples"] == 4


def test_identical_features_score_perfectly() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(12, 8))
    labels = np.arange(12) % 3
    scores = TASKS.get("embedding").score(ref.copy(), labels, ref)
    assert scores["cosine"] == pytest.approx(1.0)
    assert scores["sqnr_db"] == 999.0
    assert scores["neighbour_agreement"] == 1.0
    assert scores["recall_at_5"] == 1.0
    assert scores["label_recall_drop"] == 0.0


@pytest.mark.parametrize("rows", [1024, 3], ids=["one-block", "blocks-of-3"])
def test_recall_at_5_is_the_overlap_of_neighbour_sets(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgevit.scoring.NEIGHBOUR_ROWS", rows)  # the search in blocks finds the same
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(20, 6))
    out = ref + rng.normal(scale=0.5, size=ref.shape)
    scores = TASKS.get("embedding").score(out, np.zeros(20), ref)

    def knn(f: np.ndarray) -> list[set[int]]:
        u = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = u @ u.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row)[:5].tolist()) for row in s]

    expected = np.mean([len(a & b) / 5 for a, b in zip(knn(out), knn(ref), strict=True)])
    first = np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(*(_sims(out), _sims(ref)), strict=True)])
    assert scores["recall_at_5"] == pytest.approx(expected, abs=1e-6)
    assert scores["neighbour_agreement"] == pytest.approx(first, abs=1e-6)
    assert 0.0 < scores["recall_at_5"] < 1.0


def _sims(f: np.ndarray) -> np.ndarray:
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return s


def test_batches_score_as_the_whole_set() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(10, 4))
    out = ref + rng.normal(scale=0.3, size=ref.shape)
    labels = np.arange(10) % 2
    task = TASKS.get("embedding")
    whole = task.score(out, labels, ref)
    parts = score_batches(
        task, ((out[i : i + 3], labels[i : i + 3], ref[i : i + 3]) for i in range(0, 10, 3))
    )
    assert parts == whole


def test_it_cannot_train_on_labels_and_says_how() -> None:
    import torch

    task = TASKS.get("embedding")
    with pytest.raises(RecipeError, match="linear probe"):
        task.loss(torch.zeros(2, 4), torch.zeros(2))
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert float(task.distill_loss(t, t, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.distill_loss(s, t, 1.0)) > 0
