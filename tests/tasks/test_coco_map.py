"""mAP through COCO's own evaluator, against hand computations of its 101-point interpolation."""

from __future__ import annotations

import pytest

from edgevit.data.boxes import as_boxes
from edgevit.detections import as_detections
from edgevit.tasks.coco_map import MapTally


def test_a_missed_box_and_a_false_alarm_by_hand() -> None:
    tally = MapTally(["a", "b"])
    tally.add(
        as_boxes([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]]),
        as_detections([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0]]),
    )
    # precision 1 up to recall 0.5, none after: 51 of COCO's 101 recall points, at every IoU
    result = tally.result()
    assert result["map"] == pytest.approx(100 * 51 / 101) and result["map50"] == pytest.approx(100 * 51 / 101)


def test_localisation_counts_at_the_iou_thresholds_it_clears() -> None:
    tally = MapTally(["a"])
    tally.add(as_boxes([[0, 0, 10, 10, 0]]), as_detections([[0, 0, 10, 7.2, 0.9, 0]]))  # IoU 0.72
    result = tally.result()
    # found at IoU 0.50, 0.55, 0.60, 0.65, 0.70; missed at 0.75 ... 0.95
    assert result["map"] == pytest.approx(50.0) and result["map50"] == pytest.approx(100.0)


def test_the_wrong_class_finds_nothing() -> None:
    tally = MapTally(["a", "b"])
    tally.add(as_boxes([[0, 0, 10, 10, 0]]), as_detections([[0, 0, 10, 10, 0.9, 1]]))
    tally.add(as_boxes([[5, 5, 9, 9, 1]]), as_detections([]))
    assert tally.result() == {"map": 0.0, "map50": 0.0}
    assert MapTally(["a"]).result() == {"map": 0.0, "map50": 0.0}
