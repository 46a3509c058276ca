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
PIXELS_PER_PASS = 8 * 224 * 224


def memory_bounded_batch(request: LowerRequest, even: bool = False) -> int:
    """``quantize.calibration_batch`` cut to at most two 224-px images' pixels per batch, for a
    quantizer whose session holds a whole batch's activations (ONNX Runtime, ViT-Plus-tiny at
    224 px: +1.3 GB for 16 images, +0.36 GB for 4, +0.13 GB for 1) and whose result does not depend on the batching.
    Small images keep the recipe's batch. ``even``: the largest such batch that divides the
    calibration images evenly (ONNX Runtime's histogram calibrators stack a pass's batches)."""
    assert request.calibration is not None and request.quantize is not None
    height, width = request.calibration.shape[-2:]
    most = max(1, min(request.quantize.calibration_batch, PIXELS_PER_BATCH // (height * width)))
    return _largest_divisor(len(request.calibration), most) if even else most


def _largest_divisor(n: int, most: int) -> int:
    return max(d for d in range(1, min(most, n) + 1) if n % d == 0)


def batches_per_pass(request: LowerRequest, batch: int, batches: int) -> int:
    """How many calibration batches a histogram calibrator takes per pass (it holds every
    activation of a pass): the largest divisor of ``batches`` whose images hold at most eight
    224-px images' pixels. All of them at small sizes (one histogram, as in a single pass)."""
    assert request.calibration is not None
    height, width = request.calibration.shape[-2:]
    return _largest_divisor(batches, max(1, PIXELS_PER_PASS // (height * width * batch)))
