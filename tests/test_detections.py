"""NumPy detection helpers: IoU, class-wise NMS and agreement, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from edgevit.detections import AgreementTally, as_detections, box_iou, match_detections, nms


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    expected = [[50 / 150, 0.0, 1.0], [0.0, 0.0, 4 / 100]]
    assert np.allclose(box_iou(a, b), expected)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_nms_keeps_the_best_box_per_class_and_overlap() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50]]
    scores = [0.9, 0.8, 0.7, 0.5, 0.01]
    classes = [0, 0, 0, 1, 0]
    kept = nms(boxes, scores, classes, iou_threshold=0.6, score_threshold=0.05)
    # B overlaps A by 81/119 = 0.68 and is dropped; D is another class; E is under the score floor
    assert (
        kept.tolist()
        == as_detections([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.7, 0], [0, 0, 10, 10, 0.5, 1]]).tolist()
    )
    # at a looser threshold B stays; at most max_detections are kept, best first
    assert len(nms(boxes, scores, classes, iou_threshold=0.7)) == 4
    assert nms(boxes, scores, classes, iou_threshold=0.7, max_detections=2)[:, 4].tolist() == pytest.approx(
        [0.9, 0.8]
    )
    assert nms(np.zeros((0, 4)), [], []).shape == (0, 6)


def test_agreement_counts_same_class_matches_at_high_overlap() -> None:
    ref = as_detections([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1], [40, 40, 50, 50, 0.7, 2]])
    other = as_detections(
        [
            [0, 0, 10, 10.5, 0.85, 0],  # IoU 100/105 = 0.95: found
            [20, 20, 30, 30, 0.6, 2],  # right place, wrong class: not found
            [42, 40, 52, 50, 0.7, 2],  # IoU 80/120: too far off at 0.9
            [60, 60, 70, 70, 0.3, 1],  # float has nothing there
        ]
    )
    assert match_detections(ref, other).tolist() == [0, -1, -1]
    tally = AgreementTally()
    tally.add(ref, other)
    tally.add(ref[:1], other[:1])
    result = tally.result()
    assert result["box_agreement"] == pytest.approx(2 / 4) and result["box_precision"] == pytest.approx(2 / 5)
    assert result["score_correlation"] == 1.0  # both matched pairs are (0.9, 0.85): no variation
    empty = AgreementTally()
    empty.add(as_detections([]), as_detections([]))
    assert empty.result() == {"box_agreement": 1.0, "box_precision": 1.0, "score_correlation": 1.0}
