"""Task scores: hand-checked values, batch-by-batch sums equal to the whole, layouts, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevit.agent import fidelity
from edgevit.errors import RecipeError
from edgevit.scoring import IGNORE, confusion, miou
from edgevit.tasks import TASKS


def _onehot(classes: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[classes].transpose(0, 3, 1, 2)


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(RecipeError, match="classification, depth, detection, embedding, segmentation"):
        TASKS.get("keypoints")


def test_miou_by_hand() -> None:
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    m = confusion(pred, truth, 3)
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2 never occurs
    assert miou(m) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_segmentation_scores_and_agreement() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (3, 8, 8))
    truth[0, 0, 0] = IGNORE
    reference = _onehot(np.where(truth == IGNORE, 0, truth), 4)
    seg = TASKS.get("segmentation")
    same = seg.score(reference, truth, reference)
    assert same["miou"] == pytest.approx(100) and same["pixel_agreement"] == 1 and same["miou_drop"] == 0
    assert same["sqnr_db"] == 999.0
    damaged = reference.copy()
    damaged[:, :, :4] = _onehot(np.full((3, 4, 8), 3), 4)  # the top half predicts class 3
    scores = seg.score(damaged, truth, reference)
    flipped = np.mean(np.where(truth == IGNORE, 0, truth)[:, :4] != 3)
    assert scores["pixel_agreement"] == pytest.approx(1 - flipped / 2)
    assert scores["miou_drop"] > 10 and scores["miou"] < 90


def test_segmentation_batches_sum_to_the_whole() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, (6, 4, 4))
    out, ref = rng.normal(size=(2, 6, 5, 4, 4)).astype(np.float32)
    seg = TASKS.get("segmentation")
    scorer = seg.scorer()
    for i in range(0, 6, 4):
        scorer.add(out[i : i + 4], truth[i : i + 4], ref[i : i + 4])
    whole = seg.score(out, truth, ref)
    assert scorer.result() == pytest.approx(whole, abs=1e-6)


def test_depth_scores_by_hand() -> None:
    truth = np.array([[[1.0, 2.0], [4.0, 0.0]]])  # the 0 has no depth
    out = np.array([[[[1.0, 3.0], [4.0, 9.0]]]])
    depth = TASKS.get("depth")
    s = depth.score(out, truth, out)
    assert s["absrel"] == pytest.approx((0 + 0.5 + 0) / 3, abs=1e-6)
    assert s["delta1"] == pytest.approx(2 / 3, abs=1e-6)  # 3/2 >= 1.25
    assert s["rmse"] == pytest.approx(np.sqrt(1 / 3), abs=1e-6)
    assert s["absrel_vs_float"] == 0 and s["pearson"] == pytest.approx(1) and s["absrel_increase"] == 0
    scaled = depth.score(out * 1.1, truth, out)
    assert scaled["absrel_vs_float"] == pytest.approx(0.1, abs=1e-6)
    assert scaled["pearson"] == pytest.approx(1)  # a scale keeps the correlation


def test_depth_batches_sum_to_the_whole() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(0.5, 10, (5, 6, 6)) * (rng.random((5, 6, 6)) > 0.1)
    out, ref = rng.uniform(0.5, 10, (2, 5, 1, 6, 6))
    depth = TASKS.get("depth")
    scorer = depth.scorer()
    for i in range(0, 5, 2):
        scorer.add(out[i : i + 2], truth[i : i + 2], ref[i : i + 2])
    assert scorer.result() == pytest.approx(depth.score(out, truth, ref), abs=1e-6)


def test_classification_scores_are_the_agents() -> None:
    rng = np.random.default_rng(3)
    logits, ref = rng.normal(size=(2, 20, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    task = TASKS.get("classification")
    scorer = task.scorer()
    scorer.add(logits[:7], labels[:7], ref[:7])
    scorer.add(logits[7:], labels[7:], ref[7:])
    assert scorer.result() == fidelity(logits, labels, ref)


def test_nhwc_outputs_are_normalised_and_other_shapes_named() -> None:
    seg = TASKS.get("segmentation")
    nchw = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    expected = nchw.shape
    assert np.array_equal(seg.normalise(nchw.transpose(0, 2, 3, 1), expected), nchw)
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 4\), expected \(2, 3, 4, 5\)"):
        seg.normalise(nchw.transpose(0, 1, 3, 2), expected)


def test_losses_fall_to_zero_at_the_truth() -> None:
    truth = torch.randint(0, 3, (2, 4, 4))
    seg = TASKS.get("segmentation")
    perfect = torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float() * 50
    assert seg.loss(perfect, truth).item() < 1e-6 < seg.loss(-perfect, truth).item()
    assert seg.distill_loss(perfect, perfect, 2.0).item() == pytest.approx(0, abs=1e-6)
    depth = TASKS.get("depth")
    d = torch.rand(2, 4, 4) + 1
    assert depth.loss(d[:, None], d).item() == 0 < depth.loss(d[:, None] * 2, d).item()
