"""The gptq step through a build: the artifact holds GPTQ's weight levels, and the report says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.models.load import load
from edgevit.pipeline import build
from edgevit.quant.scheme import tensorrt_scheme
from edgevit.recipe.loader import validate_recipe
from tests.conftest import tiny_recipe

pytest.importorskip("onnxruntime")


def _artifact_levels(onnx_path: Path) -> list[np.ndarray]:
    """The INT8 levels of every 2-D weight a QDQ model dequantizes, as in x out matrices."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        q = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and q is not None and q.ndim == 2:
            zero = inits[node.input[2]].astype(np.int32) if len(node.input) > 2 else 0
            found.append(q.astype(np.int32) - zero)
    return found


def test_the_artifact_holds_gptq_levels(tiny_checkpoint: Path, tmp_path: Path) -> None:
    targets = [{"name": "trt-int8", "backend": "tensorrt", "precision": "int8"}]
    quantize = {"equalize": "off", "rotate": "off", "weight_rounding": "gptq", "float_layers": ["head"]}
    doc = tiny_recipe(tiny_checkpoint, targets, calibration=48, quantize=quantize, check={"runs": 2})
    report = build(validate_recipe(doc, "test", tmp_path), tmp_path / "b")
    entry = report.target("trt-int8")
    record = entry["gptq"]
    assert entry["status"] == "ok" and record["applied"] and record["step"] == "gptq/tensorrt-w8"
    assert record["weight_sqnr_db"]["gptq"] > record["weight_sqnr_db"]["nearest"]
    rounded = load(checkpoint=tmp_path / "b" / "gptq" / "tensorrt-w8").model
    plain = load(checkpoint=tiny_checkpoint).model
    levels = [
        m.flatten().tolist() for m in _artifact_levels(tmp_path / "b" / "targets" / "trt-int8" / "model.onnx")
    ]
    scheme = tensorrt_scheme()
    linears = [n for n, m in rounded.named_modules() if isinstance(m, torch.nn.Linear) and n != "head"]
    assert len(linears) == record["layers"] == 4
    for name in linears:
        weight = rounded.get_submodule(name).weight.detach()
        codes = scheme.weight_codes(weight)[0].T.flatten().tolist()  # MatMul weights are in x out
        assert codes in levels, name  # the backend's quantizer kept GPTQ's levels
        assert codes != scheme.weight_codes(plain.get_submodule(name).weight.detach())[0].T.flatten().tolist()
    assert "GPTQ weight rounding" in (tmp_path / "b" / "report.md").read_text()
