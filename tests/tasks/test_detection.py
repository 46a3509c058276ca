"""The detection task: assignment and loss, the scorer against the float model, learning on scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.data.transforms import MAX_BOXES
from edgevit.tasks import TASKS
from edgevit.tasks.detection_loss import assign, detection_loss


def _padded(rows: list[list[float]]) -> torch.Tensor:
    out = torch.full((1, MAX_BOXES, 5), -1.0)
    out[0, : len(rows)] = torch.tensor(rows)
    return out


def test_assignment_takes_aligned_predictions_whose_centre_is_inside() -> None:
    boxes = torch.tensor(
        [
            [0, 0, 10, 10],  # exactly box 0
            [1, 1, 11, 11],  # close to box 0
            [20, 20, 30, 30],  # exactly box 1
            [40, 40, 50, 50],  # nothing there
        ],
        dtype=torch.float32,
    )
    scores = torch.full((4, 2), 0.5)
    truth = torch.tensor([[0, 0, 10, 10, 0], [20, 20, 30, 30, 1]], dtype=torch.float32)
    owner, target = assign(boxes, scores, truth, topk=2)
    assert owner.tolist() == [0, 0, 1, -1]
    # each box's best positive reaches that box's best IoU (1), the second its share of alignment
    iou = (9 * 9) / (100 + 100 - 81)
    assert target[0].item() == pytest.approx(1.0) and target[2].item() == pytest.approx(1.0)
    assert target[1].item() == pytest.approx(iou**6, rel=1e-4) and target[3].item() == 0
    empty_owner, empty_target = assign(boxes, scores, truth[:0])
    assert (empty_owner == -1).all() and (empty_target == 0).all()


def test_loss_is_lower_for_the_right_boxes_and_classes() -> None:
    truth = _padded([[0, 0, 10, 10, 0]])
    good = torch.tensor([[[0, 0, 10, 10, 6.0, -6.0], [20, 20, 30, 30, -6.0, -6.0]]])
    wrong_class = torch.tensor([[[0, 0, 10, 10, -6.0, 6.0], [20, 20, 30, 30, -6.0, -6.0]]])
    shifted = torch.tensor([[[3, 3, 13, 13, 6.0, -6.0], [20, 20, 30, 30, -6.0, -6.0]]])
    losses = [detection_loss(o, truth).item() for o in (good, wrong_class, shifted)]
    assert losses[0] < losses[2] < losses[1]
    assert detection_loss(good, torch.full((1, MAX_BOXES, 5), -1.0)).item() > 0  # background still learns


def test_scorer_against_itself_and_against_a_damaged_copy() -> None:
    task = TASKS.get("detection")
    rng = np.random.default_rng(0)
    outputs = np.full((2, 20, 6), -8.0, np.float32)
    outputs[:, :, :2] = rng.uniform(0, 20, (2, 20, 2))
    outputs[:, :, 2:4] = outputs[:, :, :2] + 8
    outputs[0, 3, 4] = 5.0  # image 0: a confident class-0 box at location 3
    outputs[1, 7, 5] = 5.0  # image 1: a class-1 box at location 7
    truth = np.full((2, MAX_BOXES, 5), -1.0, np.float32)
    truth[0, 0] = [*outputs[0, 3, :4], 0]
    truth[1, 0] = [*outputs[1, 7, :4], 1]
    same = task.score(outputs, truth, outputs)
    assert same["map"] == pytest.approx(100.0) and same["map_drop"] == 0 and same["box_agreement"] == 1.0
    damaged = outputs.copy()
    damaged[1, 7, :4] += 3  # image 1's box moves 3 px: IoU 25/103, no longer a match at 0.5
    scores = task.score(damaged, truth, outputs)
    assert scores["box_agreement"] == pytest.approx(0.5) and scores["map_drop"] == pytest.approx(50.0)
    assert scores["sqnr_db"] < 60


def test_a_tiny_detector_learns_the_scenes() -> None:
    from edgevit.data import DataSpec, open_data
    from edgevit.data.stream import Images
    from edgevit.models.load import create_configured

    torch.manual_seed(0)
    model, cfg = create_configured(
        "vit_plus_tiny_patch8_32", 5, None, {}, {"depth": 1, "task": "detection", "det_levels": 2}
    )
    source = open_data(DataSpec(source="shapes-det", split="train", count=16), task="detection")
    x, y = next(Images(source, cfg).in_order(16))
    task = TASKS.get("detection")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    first = None
    for _ in range(40):
        loss = task.loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    model.eval()
    with torch.no_grad():
        out = model(x).numpy()
    assert task.score(out, y.numpy(), out)["map50"] > 20  # memorised, at least partly


def test_a_recipe_with_a_detector_is_refused_in_one_line(tmp_path: Path) -> None:
    from edgevit.errors import RecipeError
    from edgevit.models.load import create_configured, save
    from edgevit.pipeline import build
    from edgevit.recipe.loader import validate_recipe

    model, config = create_configured(
        "vit_plus_tiny_patch8_32", 5, None, {}, {"depth": 1, "task": "detection"}
    )
    save(model.eval(), config, tmp_path / "det")
    doc = {
        "name": "det",
        "model": {"checkpoint": str(tmp_path / "det")},
        "data": {
            "calibration": {"source": "shapes-det", "split": "train", "count": 4},
            "evaluation": {"source": "shapes-det", "split": "test", "count": 4},
        },
        "targets": [{"name": "ort", "backend": "onnxruntime", "precision": "fp32"}],
    }
    with pytest.raises(RecipeError, match=r"model\.checkpoint is a detector"):
        build(validate_recipe(doc, "test", tmp_path), tmp_path / "b")
