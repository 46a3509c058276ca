"""The OpenVINO target's NNCF settings: activation ranges by method, SmoothQuant alpha."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

TARGET = TARGETS.get("openvino")


def quantize(ckpt: Path, onnx: Path, out: Path, calib: np.ndarray, **q: object) -> tuple[list[float], int]:
    """Build INT8; return the widths of its per-tensor (activation) FakeQuantize ranges, in graph
    order, and its number of Multiply ops."""
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    stage = QuantizeStage.model_validate({"stage": "quantize", **q})
    artifact = TARGET.lower(LowerRequest(onnx, "int8", load(checkpoint=ckpt).config, {}, stage, calib), out)
    ops = ov.Core().read_model(str(artifact)).get_ordered_ops()
    widths = []
    for op in ops:
        if op.get_type_name() == "FakeQuantize":
            low, high = (op.input_value(i).get_node() for i in (1, 2))
            if low.get_type_name() == "Constant" and low.get_data().size == 1:
                widths.append(float(high.get_data().ravel()[0] - low.get_data().ravel()[0]))
    return widths, sum(op.get_type_name() == "Multiply" for op in ops)


def test_method_and_smooth_quant_alpha_reach_nncf(tiny_checkpoint, tiny_onnx, inputs, tmp_path) -> None:
    minmax, multiplies = quantize(tiny_checkpoint, tiny_onnx, tmp_path / "m", inputs)
    percentile, _ = quantize(tiny_checkpoint, tiny_onnx, tmp_path / "p", inputs, method="percentile")
    _, multiplies_off = quantize(tiny_checkpoint, tiny_onnx, tmp_path / "o", inputs, smooth_quant_alpha=-1)
    assert len(minmax) == len(percentile) >= 5  # at least the qkv, proj, fc1, fc2 and head inputs
    # Global min/max spans at least what the mean of per-sample quantiles does, and wider somewhere.
    assert all(p <= m + 1e-6 for p, m in zip(percentile, minmax, strict=True))
    assert any(p < 0.99 * m for p, m in zip(percentile, minmax, strict=True))
    # SmoothQuant scales the Linear layers' inputs by extra Multiply ops; alpha -1 turns it off.
    assert multiplies_off < multiplies


def _smoothing_scales(artifact: Path) -> np.ndarray:
    """The constants of SmoothQuant's Multiply ops, concatenated in graph order."""
    import openvino as ov

    found = []
    for op in ov.Core().read_model(str(artifact)).get_ordered_ops():
        if op.get_type_name() == "Multiply" and "smooth_quant" in op.get_friendly_name():
            for i in range(2):
                src = op.input_value(i).get_node()
                if src.get_type_name() == "Constant":
                    found.append(np.asarray(src.get_data(), np.float64).ravel())
    return np.concatenate(found) if found else np.zeros(0)


def test_default_alpha_is_edgevits_not_nncfs(tiny_checkpoint, tiny_onnx, inputs, tmp_path) -> None:
    from edgevit.targets.openvino import SMOOTH_QUANT_ALPHA

    scales = {}
    for name, alpha in {"default": None, "explicit": SMOOTH_QUANT_ALPHA, "nncf": 0.95}.items():
        out = tmp_path / name
        out.mkdir()
        stage = QuantizeStage(stage="quantize", smooth_quant_alpha=alpha)
        request = LowerRequest(tiny_onnx, "int8", load(checkpoint=tiny_checkpoint).config, {}, stage, inputs)
        scales[name] = _smoothing_scales(TARGET.lower(request, out))
    assert scales["default"].size > 0
    np.testing.assert_allclose(scales["default"], scales["explicit"])
    assert scales["default"].shape != scales["nncf"].shape or not np.allclose(
        scales["default"], scales["nncf"]
    )


def test_a_build_path_with_a_comma_converts(tiny_checkpoint, tiny_onnx, tmp_path) -> None:
    """OpenVINO's converter splits a path at commas; the target reads such a path all the same."""
    import shutil

    folder = tmp_path / "run (a, b)"
    folder.mkdir()
    onnx_path = folder / "model.onnx"
    shutil.copyfile(tiny_onnx, onnx_path)
    config = load(checkpoint=tiny_checkpoint).config
    out = folder / "ov"
    out.mkdir()
    artifact = TARGETS.get("openvino").lower(LowerRequest(onnx_path, "fp32", config, {}, None, None), out)
    assert artifact.exists() and artifact.with_suffix(".bin").exists()
