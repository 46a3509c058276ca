"""The quantize stage's settings: the accuracy budget's limits (any task's scores, misses summed in
points) and the Conv scope the backends see."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgevit.quant.settings import AccuracyBudget, QuantizeStage


def test_classification_shortfall_in_points_and_db() -> None:
    budget = AccuracyBudget(max_top1_drop=0.5, min_sqnr_db=30, min_agreement=0.99)
    scores = {"top1_drop": 1.5, "sqnr_db": 28.0, "agreement": 0.98}
    assert budget.shortfall(scores) == pytest.approx(1.0 + 2.0 + 1.0, abs=1e-6)
    assert budget.met({"top1_drop": 0.5, "sqnr_db": 30.0, "agreement": 0.99})


def test_dense_limits_use_the_tasks_scores() -> None:
    seg = AccuracyBudget(max_miou_drop=1.0, min_pixel_agreement=0.98)
    assert seg.shortfall({"miou_drop": 2.0, "pixel_agreement": 0.97}) == pytest.approx(2.0, abs=1e-6)
    depth = AccuracyBudget(max_depth_absrel_vs_float=0.01, min_depth_pearson=0.98)
    assert depth.met({"absrel_vs_float": 0.009, "pearson": 0.99})
    assert depth.shortfall({"absrel_vs_float": 0.02, "pearson": 0.99}) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(KeyError):  # another task's limit has no score to read
        seg.shortfall({"top1_drop": 0.0})


def test_a_budget_needs_a_limit() -> None:
    with pytest.raises(ValidationError, match="set one of max_top1_drop, min_sqnr_db"):
        AccuracyBudget()


def test_the_conv_scope_reaches_the_backends_as_float_layers() -> None:
    convs = ["patch_embed.proj", "dense_head.proj.0", "dense_head.out.0"]
    q = QuantizeStage(stage="quantize")
    assert q.for_convs(convs) is q  # Linear only: no Conv is quantized, nothing to keep float
    both = QuantizeStage(stage="quantize", patch_embed=True, decoder=True)
    assert both.for_convs(convs) is both
    decoder = QuantizeStage(stage="quantize", decoder=True, float_layers=["blocks.0.mlp.fc2"])
    seen = decoder.for_convs(convs)
    assert seen.patch_embed and seen.float_layers == ["blocks.0.mlp.fc2", "patch_embed.proj"]
    embed = QuantizeStage(stage="quantize", patch_embed=True).for_convs(convs)
    assert embed.patch_embed and embed.float_layers == ["dense_head.proj.0", "dense_head.out.0"]
    # a classifier's only Conv is the patch embedding: patch_embed means what it always meant
    classifier = QuantizeStage(stage="quantize", patch_embed=True)
    assert classifier.for_convs(["patch_embed.proj"]) is classifier
