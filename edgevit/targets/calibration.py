"""Calibration batches shared by the backends' post-training quantizers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgevit.errors import LoweringError
from edgevit.targets.base import LowerRequest


def calibration_batches(request: LowerRequest, batch: int | None = None) -> Iterator[np.ndarray]:
    """Yield the request's calibration inputs in batches (``quantize.calibration_batch`` by default)."""
    if request.calibration is None or request.quantize is None or len(request.calibration) == 0:
        raise LoweringError("int8 needs calibration data", "set data.calibration and a `quantize` stage")
    size = batch or request.quantize.calibration_batch
    for i in range(0, len(request.calibration), size):
        yield request.calibration[i : i + size]


PIXELS_PER_BATCH = 2 * 224 * 224


def memory_bounded_batch(request: LowerRequest) -> int:
    """``quantize.calibration_batch`` cut to at most two 224-px images' pixels per batch: for a
    quantizer whose result does not depend on how the images are batched (min/max statistics) and
    whose session holds a whole batch's activations (ONNX Runtime: +1.3 GB for 16 images of
    ViT-Plus-tiny at 224 px, +0.35 GB for 4). Small images keep the recipe's batch."""
    assert request.calibration is not None and request.quantize is not None
    height, width = request.calibration.shape[-2:]
    return max(1, min(request.quantize.calibration_batch, PIXELS_PER_BATCH // (height * width)))
