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


def test_minmax_calibration_batches_bound_memory_not_the_result(
    tiny_checkpoint, tiny_onnx, inputs, tmp_path, monkeypatch
) -> None:
    """224-px images calibrate two at a time (ONNX Runtime's session holds a batch's activations);
    MinMax keeps each batch's min and max only, so the quantized model is the same."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgevit.targets import calibration

    cfg = load(checkpoint=tiny_checkpoint).config
    stage = QuantizeStage(stage="quantize", calibration_batch=16, equalize="off")
    big = LowerRequest(tiny_onnx, "int8", cfg, {}, stage, np.zeros((20, 3, 224, 224), np.float32))
    assert calibration.memory_bounded_batch(big) == 2
    small = LowerRequest(tiny_onnx, "int8", cfg, {}, stage, inputs)
    assert calibration.memory_bounded_batch(small) == 16  # 32 px: the recipe's batch

    def weights(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    for name in ("16", "1"):
        (tmp_path / name).mkdir()
    batched = weights(TARGET.lower(small, tmp_path / "16"))
    monkeypatch.setattr(calibration, "PIXELS_PER_BATCH", 32 * 32)  # one image per batch
    from edgevit.targets import onnxruntime as ort_target

    fed: list[int] = []
    batches = ort_target.calibration_batches
    monkeypatch.setattr(
        ort_target, "calibration_batches", lambda r, b=None: (fed.append(len(x)) or x for x in batches(r, b))
    )
    single = weights(TARGET.lower(small, tmp_path / "1"))
    assert fed == [1] * len(inputs)
    assert batched.keys() == single.keys()
    assert all(np.array_equal(batched[k], single[k]) for k in batched)
