"""The least-error range search (``input_ranges: mse``) against a hand computation."""

from __future__ import annotations

import torch

from edgevit.quant.ranges import RANGE_FACTORS, RangeSearch
from edgevit.quant.scheme import Int8Scheme


def _hand_error(x: torch.Tensor, lo: float, hi: float) -> float:
    """Squared error of ``x`` on the asymmetric UINT8 grid of [lo, hi], written out."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / 255
    zero = round(-lo / step)
    q = torch.clamp(torch.round(x / step) + zero, 0, 255)
    return float((((q - zero) * step - x) ** 2).sum())


def test_rare_extremes_are_clipped_and_a_plain_tensor_keeps_its_range() -> None:
    torch.manual_seed(0)
    asym = Int8Scheme("a", activation_symmetric=False)
    bulk = torch.randn(2**18)
    spiky = torch.cat([bulk, torch.tensor([20.0])])  # one value 4x past the rest, as in real ViTs
    search = RangeSearch(asym)
    for half in spiky.chunk(2):  # two batches: the errors add up
        search.add("spiky", half, float(spiky.min()), float(spiky.max()))
    search.add("flat", torch.linspace(-1, 1, 4096), -1.0, 1.0)
    best = search.best()
    assert best["flat"] == 1.0
    errors = {f: _hand_error(spiky, float(spiky.min()) * f, float(spiky.max()) * f) for f in RANGE_FACTORS}
    assert best["spiky"] == min(errors, key=errors.__getitem__) < 1.0
    for f, e in zip(RANGE_FACTORS, search.errors["spiky"], strict=True):
        assert abs(e - errors[f]) <= 1e-3 * errors[f]
