"""The INT8 simulator against the real artifacts: the same logit SQNR to float, per backend."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.check.layerwise import sqnr_db
from edgevit.models.load import load
from edgevit.quant.outliers import add_outliers
from edgevit.quant.scheme import Int8Scheme, onnxruntime_scheme, tensorrt_scheme
from edgevit.quant.simulate import simulate
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("onnxruntime")

CASES = [
    ("onnxruntime", {"reduce_range": False}, onnxruntime_scheme(seven_bit=False)),
    ("onnxruntime", {"reduce_range": True}, onnxruntime_scheme(seven_bit=True)),
    ("tensorrt", {}, tensorrt_scheme()),
]


@pytest.mark.parametrize("outliers", [False, True], ids=["original", "outliers"])
def test_simulator_matches_the_artifacts(outliers: bool, tiny_checkpoint: Path, tmp_path: Path) -> None:
    loaded = load(checkpoint=tiny_checkpoint)
    model = copy.deepcopy(loaded.model).eval()
    if outliers:
        add_outliers(model, channels=2, seed=0)
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32)
    images = rng.uniform(-1, 1, (48, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    onnx_path = export_onnx(model, loaded.config.input_size, tmp_path / "model.onnx")
    stage = QuantizeStage(stage="quantize", calibration_batch=16)
    for backend, options, scheme in CASES:
        target = TARGETS.get(backend)
        out = tmp_path / f"{backend}-{scheme.weight_bits}"
        out.mkdir()
        request = LowerRequest(onnx_path, "int8", loaded.config, options, stage, calibration)
        artifact = target.lower(request, out)
        with target.runner(artifact, 1, loaded.config.input_size) as runner:
            built = sqnr_db(reference, runner.infer_all(images, 16))
        with torch.no_grad():
            simulated = sqnr_db(
                reference, simulate(model, scheme, calibration)(torch.from_numpy(images)).numpy()
            )
        assert abs(simulated - built) < 0.5, (backend, scheme, built, simulated)


def test_grids_follow_the_backends_rules() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    asym = Int8Scheme("a", activation_symmetric=False)
    sym = Int8Scheme("s", activation_symmetric=True)
    # asymmetric UINT8 over [-1, 3]: step 4/255, zero exactly representable
    assert torch.allclose(asym.quantize_activation(x, -1.0, 3.0), x, atol=2 / 255)
    assert float(asym.quantize_activation(torch.tensor([0.0]), -1.0, 3.0)) == 0.0
    # symmetric INT8 over ±3: -1 is kept, values past the range clip
    assert float(sym.quantize_activation(torch.tensor([5.0]), -1.0, 3.0)) == pytest.approx(3.0)
    w = torch.tensor([[1.0, -0.5, 0.25], [100.0, 0.3, -100.0]])
    eight = Int8Scheme("8", False).quantize_weight(w)
    seven = Int8Scheme("7", False, weight_bits=7).quantize_weight(w)
    assert torch.equal(eight[1], torch.tensor([100.0, 0.0, -100.0]))  # its own channel's step: 100/127
    assert torch.allclose(eight[0], w[0], atol=0.5 / 127) and torch.allclose(seven[0], w[0], atol=0.5 / 64)
