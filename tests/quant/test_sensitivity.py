"""The simulated ranking: the same gains as switching each layer back to float in a full run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevit.check.layerwise import sqnr_db
from edgevit.models.load import create, logits_of
from edgevit.quant import sensitivity
from edgevit.quant.outliers import add_outliers
from edgevit.quant.scheme import onnxruntime_scheme
from edgevit.quant.simulate import simulation
from tests.conftest import TINY


def test_running_from_a_block_gives_the_full_runs_gains() -> None:
    torch.manual_seed(0)
    model = create(TINY, num_classes=10, depth=3).eval()  # 3 blocks: layers in blocks 1, 2 skip ahead
    add_outliers(model, channels=2, seed=0)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    images = rng.uniform(-1, 1, (20, 3, 32, 32)).astype(np.float32)
    scheme = onnxruntime_scheme(seven_bit=False)
    ranking = sensitivity.simulated(model, scheme, calibration, images, batch=8)  # 3 batches, one short

    sim = simulation(model, scheme, calibration)
    reference = logits_of(model, images, 64)
    base = sqnr_db(reference, logits_of(sim.model, images, 64))
    assert ranking.method == "simulated" and ranking.base_sqnr_db == pytest.approx(base, abs=1e-3)
    expected = {}
    for name in sim.layers:
        with sim.floating([name]) as floated:
            expected[name] = sqnr_db(reference, logits_of(floated, images, 64)) - base
    got = {x["layer"]: x["gain_db"] for x in ranking.layers}
    assert set(got) == set(sim.layers) and any(n.startswith("blocks.") for n in got)
    assert all(got[n] == pytest.approx(expected[n], abs=2e-3) for n in got)
    gains = [x["gain_db"] for x in ranking.layers]
    assert gains == sorted(gains, reverse=True) and gains[0] > 1  # an outlier-fed layer costs dB
