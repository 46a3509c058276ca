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


def test_histogram_calibration_runs_in_passes_at_large_sizes(
    tiny_checkpoint, tiny_onnx, inputs, tmp_path, monkeypatch
) -> None:
    """Percentile and entropy hold every activation of a pass: large images calibrate in passes of
    at most eight 224-px images (a divisor of the batch count); the scales stay close to one pass."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgevit.targets import calibration

    cfg = load(checkpoint=tiny_checkpoint).config
    stage = QuantizeStage(stage="quantize", method="percentile", calibration_batch=16, equalize="off")
    big = LowerRequest(tiny_onnx, "int8", cfg, {}, stage, np.zeros((64, 3, 224, 224), np.float32))
    assert calibration.batches_per_pass(big, 2, 32) == 4 and calibration.batches_per_pass(big, 2, 31) == 1
    assert calibration.memory_bounded_batch(big, even=True) == 2
    small = LowerRequest(tiny_onnx, "int8", cfg, {}, stage, inputs)
    assert calibration.memory_bounded_batch(small, even=True) == 12  # 24 images: 2 of 12, not 16 + 8
    assert calibration.batches_per_pass(small, 12, 2) == 2  # 32 px: one pass, as before

    def scales(path):
        found = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
        return {k: float(v) for k, v in found.items() if k.endswith("_scale") and v.ndim == 0}  # activations

    (tmp_path / "one").mkdir()
    one = scales(TARGET.lower(small, tmp_path / "one"))
    monkeypatch.setattr(calibration, "PIXELS_PER_BATCH", 4 * 32 * 32)
    monkeypatch.setattr(calibration, "PIXELS_PER_PASS", 8 * 32 * 32)  # 24 images: 3 passes of 2 batches
    passes: list[int] = []
    monkeypatch.setattr(
        "onnxruntime.quantization.calibrate.HistogramCalibrater.clear_collected_data",
        lambda self: (
            passes.append(len(self.intermediate_outputs)) or setattr(self, "intermediate_outputs", [])
        ),
    )
    (tmp_path / "passes").mkdir()
    several = scales(TARGET.lower(small, tmp_path / "passes"))
    assert passes == [2, 2, 2]
    assert one.keys() == several.keys() and one
    ratios = [several[k] / one[k] for k in one if one[k] > 0]
    assert max(abs(r - 1) for r in ratios) < 0.02, sorted(ratios)
