"""The ONNX Runtime target's INT8 build details (the cross-backend contract is test_contract.py)."""

from __future__ import annotations

import pytest

from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("onnxruntime")
TARGET = TARGETS.get("onnxruntime")


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_keeps_stdout_clean(
    method, tiny_checkpoint, tiny_onnx, inputs, tmp_path, capfd: pytest.CaptureFixture[str]
) -> None:
    """stdout carries `edgevit build --json`'s report: ONNX Runtime's calibrator progress must not."""
    stage = QuantizeStage(stage="quantize", method=method, calibration_batch=8)
    request = LowerRequest(tiny_onnx, "int8", load(checkpoint=tiny_checkpoint).config, {}, stage, inputs)
    capfd.readouterr()
    assert TARGET.lower(request, tmp_path).is_file()
    assert capfd.readouterr().out == ""
