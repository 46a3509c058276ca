"""Inputs shared by the backend tests: random images and the tiny model's float logits for them."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.models.load import load


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (24, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load(checkpoint=tiny_checkpoint).model(torch.from_numpy(inputs)).numpy()
