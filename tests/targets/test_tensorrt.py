"""TensorRT host side: symmetric explicit-quantization ONNX, FP16 ONNX, build plan, parser lint."""

import json

import numpy as np
import pytest

from edgevit.check.accuracy import compare
from edgevit.errors import LoweringError
from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("onnxruntime")
import onnx

from edgevit.targets.tensorrt import lint, qdq_summary

TARGET = TARGETS.get("tensorrt")


def build(ckpt, onnx_path, out, precision, calib):
    cfg = load(checkpoint=ckpt).config
    stage = QuantizeStage(stage="quantize", calibration_batch=8) if precision == "int8" else None
    out.mkdir(parents=True, exist_ok=True)
    return TARGET.lower(LowerRequest(onnx_path, precision, cfg, {}, stage, calib, checkpoint=ckpt), out)


def test_int8_is_symmetric_and_leaves_norms_softmax_adds_unquantized(
    tiny_checkpoint, tiny_onnx, inputs, reference, tmp_path
) -> None:
    artifact = build(tiny_checkpoint, tiny_onnx, tmp_path, "int8", inputs)
    summary = qdq_summary(artifact)
    assert summary["qdq_nodes"] > 0 and summary["symmetric"] and summary["int8"]
    # Linear layers only: their MatMul/Gemm, and the bias Add of a Linear (ORT quantizes the MatMul output).
    assert set(summary["dequantized_into"]) <= {"MatMul", "Gemm", "Add"}
    graph = onnx.load(str(artifact)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    consts = {i.name for i in graph.initializer}
    for node in graph.node:
        residual = node.op_type == "Add" and not any(i in consts for i in node.input)
        if node.op_type in ("LayerNormalization", "Softmax") or residual:
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name
        if (
            node.op_type == "Add"
            and not residual
            and any(producers.get(i) == "DequantizeLinear" for i in node.input)
        ):
            assert node.name.startswith("node_linear"), node.name  # a Linear's bias, not a residual
    with TARGET.runner(artifact, 1, (3, 32, 32)) as runner:
        assert runner.simulated == "onnxruntime-fakequant"
        acc = compare(runner.infer(inputs), reference.argmax(1), reference)
    assert acc.cosine > 0.99
    plan = json.loads((tmp_path / "build_engine.json").read_text())
    assert plan["explicit_quantization"] and plan["flags"] == ["FP16", "INT8"]
    assert plan["layer_precisions"]["LayerNormalization"] == "fp32"
    assert plan["optimization_profile"]["input"]["opt"] == [1, 3, 32, 32]


def test_fp16_onnx_keeps_float32_io(tiny_checkpoint, tiny_onnx, inputs, reference, tmp_path) -> None:
    artifact = build(tiny_checkpoint, tiny_onnx, tmp_path, "fp16", inputs)
    graph = onnx.load(str(artifact)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    with TARGET.runner(artifact, 1, (3, 32, 32)) as runner:
        out = runner.infer(inputs)
    assert np.allclose(out, reference, atol=2e-2)
    assert TARGET.describe(artifact)["tensorrt"]["flags"] == ["FP16"]


def test_lint_names_ops_the_parser_lacks(tiny_onnx, tmp_path, tiny_checkpoint, inputs) -> None:
    assert lint(tiny_onnx)["unsupported"] == []
    model = onnx.load(str(tiny_onnx))
    model.graph.node[0].op_type = "STFT"  # not imported by TensorRT's ONNX parser
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    assert lint(bad)["unsupported"] == ["STFT"]
    with pytest.raises(LoweringError, match="ONNX parser does not support STFT"):
        build(tiny_checkpoint, bad, tmp_path / "o", "fp16", inputs)
