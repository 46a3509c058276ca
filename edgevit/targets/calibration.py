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
