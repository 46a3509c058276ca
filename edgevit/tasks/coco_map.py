"""Detection accuracy against labelled boxes by COCO's own evaluator (pycocotools' ``COCOeval``),
never our own matching: mAP@[.5:.95] and mAP@.5 as COCO reports them (101-point interpolated
precision, up to 100 detections an image, every area).

Images are added one at a time; what is held is their boxes and detections (20 and 24 bytes
each), never the images. Areas are the boxes' own, so COCO's small/medium/large split follows the
boxes, and crowd regions are not modelled (:mod:`edgevit.data.boxes` leaves them out).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from edgevit.data.boxes import as_boxes, coco_annotations, coco_categories
from edgevit.detections import as_detections


class MapTally:
    """Labelled boxes and detections gathered image by image; :meth:`result` scores them."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self._truth: list[np.ndarray] = []
        self._found: list[np.ndarray] = []

    def add(self, truth: np.ndarray, detections: np.ndarray) -> None:
        """One image's labelled boxes (N x 5) and detections (M x 6)."""
        self._truth.append(as_boxes(truth))
        self._found.append(as_detections(detections))

    def result(self) -> dict[str, float]:
        """map (mAP@[.5:.95], %) and map50 (mAP@.5, %); 0 when nothing was detected."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        results = [
            [k + 1, x0, y0, x1 - x0, y1 - y0, score, int(cls) + 1]
            for k, found in enumerate(self._found)
            for x0, y0, x1, y1, score, cls in found.astype(np.float64)
        ]
        if not results:
            return {"map": 0.0, "map50": 0.0}
        truth = {
            "images": [{"id": k + 1} for k in range(len(self._truth))],
            "annotations": coco_annotations(self._truth),
            "categories": coco_categories(self.class_names),
        }
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            truth_set = COCO()
            truth_set.dataset = truth
            truth_set.createIndex()
            found_set = truth_set.loadRes(np.asarray(results, dtype=np.float64))
            evaluation = COCOeval(truth_set, found_set, iouType="bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = evaluation.stats
        return {"map": 100.0 * max(float(stats[0]), 0.0), "map50": 100.0 * max(float(stats[1]), 0.0)}
