"""Per-tensor activation ranges chosen by the error they leave (``options.input_ranges: mse``).

A calibrated min/max range spends a per-tensor grid's 255 levels on the tensor's extremes. On a
real pretrained ViT a few channels and tokens hold values tens of times larger than the rest, so
the rest get a handful of levels. Shrinking the range by a factor clips those few values and
rounds the others finer; the factor that leaves the least squared error over the calibration
images (on the float model, each tensor on its own) is kept, 1 (min/max) on a tie.

One rule for both sides: the INT8 simulator searches its ranges with :class:`RangeSearch`, and the
QDQ targets search the scales of the artifact they built with the same class on the same images
(``edgevit.targets.input_ranges``), so what the simulator chooses with is what the artifact runs.
"""

from __future__ import annotations

import torch

from edgevit.quant.scheme import Int8Scheme

# The candidate factors of a calibrated range: measured on DINOv2 ViT-S/14 (rotated, ONNX Runtime's
# grid), the chosen ones span 0.4-1.0; finer steps moved the result by under 0.1 dB.
RANGE_FACTORS: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


class RangeSearch:
    """Squared quantization error of each tensor at each candidate range factor, summed over the
    batches it sees (memory does not grow with the images); :meth:`best` picks a factor per tensor."""

    def __init__(self, scheme: Int8Scheme, factors: tuple[float, ...] = RANGE_FACTORS) -> None:
        self.scheme = scheme
        self.factors = factors
        self.errors: dict[str, list[float]] = {}

    @torch.no_grad()
    def add(self, key: str, x: torch.Tensor, lo: float, hi: float) -> None:
        """Add the error of ``x`` quantized on the grid of [``lo``, ``hi``] times each factor."""
        x = x.detach().float()
        sums = self.errors.setdefault(key, [0.0] * len(self.factors))
        for i, f in enumerate(self.factors):
            diff = self.scheme.quantize_activation(x, lo * f, hi * f) - x
            sums[i] += float(diff.square().sum(dtype=torch.float64))

    def best(self) -> dict[str, float]:
        """Each tensor's factor of least error (the first, min/max, on a tie)."""
        return {key: self.factors[min(range(len(e)), key=e.__getitem__)] for key, e in self.errors.items()}
