"""The TFLite target: INT8 modes and scope, op reporting, conversion errors, interpreter fallback."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.check.accuracy import compare
from edgevit.errors import LoweringError, TargetUnavailableError
from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from edgevit.targets import tflite
from edgevit.targets.tflite_graph import op_counts, read_ops

TARGET = TARGETS.get("tflite")


def build(
    ckpt: Path, onnx: Path, out: Path, precision: str, calib: np.ndarray, mode: str | None = None, **q
) -> Path:
    cfg = load(checkpoint=ckpt).config
    stage = QuantizeStage(stage="quantize", calibration_batch=8, **q) if precision == "int8" else None
    options = {"mode": mode} if mode else {}
    out.mkdir(parents=True, exist_ok=True)
    request = LowerRequest(onnx, precision, cfg, options, stage, calib, checkpoint=ckpt)
    return TARGET.lower(request, out)


def run(artifact: Path, x: np.ndarray) -> np.ndarray:
    with TARGET.runner(artifact, 1, (3, 32, 32)) as runner:
        return runner.infer(x)


def kinds(artifact: Path) -> dict[str, dict[str, int]]:
    return op_counts(read_ops(artifact))


def test_static_int8_quantizes_only_the_linear_layers(tiny_checkpoint, tiny_onnx, inputs, tmp_path) -> None:
    float_ops = read_ops(build(tiny_checkpoint, tiny_onnx, tmp_path / "f", "fp32", inputs))
    fcs = [op for op in float_ops if op.kind == "FULLY_CONNECTED"]
    linear = sum(op.has_constant_weight for op in fcs)
    assert {op.precision for op in fcs} == {"fp32"} and 0 < linear < len(fcs)
    ops = kinds(build(tiny_checkpoint, tiny_onnx, tmp_path / "q", "int8", inputs))
    # Linear layers (constant weights) are int8; q @ k^T (an FC on two activations) stays float.
    assert ops["FULLY_CONNECTED"] == {"int8": linear, "fp32": len(fcs) - linear}
    for kind in ("BATCH_MATMUL", "SOFTMAX", "ADD", "GELU", "CONV_2D", "MEAN"):
        assert set(ops[kind]) <= {"fp32", "const"}, kind  # attention, norms, residuals stay float
    assert not (tmp_path / "q" / "float.tflite").exists()  # the intermediate is removed


def test_targets_of_one_model_share_one_conversion(
    tiny_checkpoint, tiny_onnx, inputs, tmp_path, monkeypatch
) -> None:
    calls = []
    real = tflite.convert
    monkeypatch.setattr(tflite, "convert", lambda *a: calls.append(a) or real(*a))
    tflite._float_tflite.cache_clear()
    fp32 = build(tiny_checkpoint, tiny_onnx, tmp_path / "f", "fp32", inputs)
    build(tiny_checkpoint, tiny_onnx, tmp_path / "h", "fp16", inputs)
    assert len(calls) == 1 and fp32.read_bytes()[4:8] == b"TFL3"


def test_scope_options_add_attention_and_patch_embed(tiny_checkpoint, tiny_onnx, inputs, tmp_path) -> None:
    ops = kinds(
        build(tiny_checkpoint, tiny_onnx, tmp_path, "int8", inputs, matmul_scope="all", patch_embed=True)
    )
    assert set(ops["FULLY_CONNECTED"]) == {"int8"}
    assert ops["BATCH_MATMUL"] == {"int8": sum(ops["BATCH_MATMUL"].values())}
    assert ops["CONV_2D"] == {"int8": 1}


@pytest.mark.parametrize(
    ("precision", "mode", "marker", "compute"),
    [
        ("int8", "dynamic", None, "dynamic-int8"),
        ("int8", "weight_only", "int8->fp32", "fp32"),
        ("fp16", None, "fp16->fp32", "fp32"),
    ],
)
def test_weight_modes(
    precision, mode, marker, compute, tiny_checkpoint, tiny_onnx, inputs, reference, tmp_path
) -> None:
    artifact = build(tiny_checkpoint, tiny_onnx, tmp_path, precision, inputs, mode)
    ops = kinds(artifact)
    assert compute in ops["FULLY_CONNECTED"]
    if marker:
        assert marker in ops["DEQUANTIZE"]
    fp32_size = (build(tiny_checkpoint, tiny_onnx, tmp_path / "f", "fp32", inputs)).stat().st_size
    assert artifact.stat().st_size < 0.75 * fp32_size
    result = compare(run(artifact, inputs), reference.argmax(1), reference)
    assert result.cosine > 0.999 if precision == "fp16" else result.cosine > 0.99


def test_float_layers_stay_float_and_are_named_like_the_onnx_layers(
    tiny_checkpoint, tiny_onnx, inputs, tmp_path
) -> None:
    from edgevit.errors import LoweringError
    from edgevit.targets.graph import weighted_layers as onnx_layers
    from edgevit.targets.tflite_graph import module_path

    layers = onnx_layers(tiny_onnx)
    assert layers == [
        "patch_embed.proj",
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "head",
    ]
    all_int8 = build(tiny_checkpoint, tiny_onnx, tmp_path / "a", "int8", inputs)
    # litert-torch's scopes name the modules (the last op is named after the model output).
    named = [
        module_path(op)
        for op in read_ops(all_int8)
        if op.kind == "FULLY_CONNECTED" and op.has_constant_weight
    ]
    assert named == [*layers[1:-1], None]
    assert TARGET.quantized_layers(all_int8, tiny_onnx) == layers[1:]  # the patch Conv is float by default

    kept = build(
        tiny_checkpoint, tiny_onnx, tmp_path / "k", "int8", inputs, float_layers=["blocks.0.mlp.fc1", "head"]
    )
    assert TARGET.quantized_layers(kept, tiny_onnx) == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc2",
    ]
    assert kinds(kept)["FULLY_CONNECTED"]["int8"] == kinds(all_int8)["FULLY_CONNECTED"]["int8"] - 2

    with pytest.raises(LoweringError, match=r"float_layers names blocks\.7\.mlp\.fc1, not a layer"):
        build(tiny_checkpoint, tiny_onnx, tmp_path / "u", "int8", inputs, float_layers=["blocks.7.mlp.fc1"])
    with pytest.raises(LoweringError, match="mode full quantizes every op"):
        build(tiny_checkpoint, tiny_onnx, tmp_path / "f", "int8", inputs, "full", float_layers=["head"])


def test_full_int8_quantizes_every_op_and_its_io(
    tiny_checkpoint, tiny_onnx, inputs, reference, tmp_path
) -> None:
    artifact = build(tiny_checkpoint, tiny_onnx, tmp_path, "int8", inputs, "full")
    ops = kinds(artifact)
    for kind in ("FULLY_CONNECTED", "SOFTMAX", "ADD", "AVERAGE_POOL_2D"):
        assert set(ops[kind]) == {"int8"}, kind
    result = compare(run(artifact, inputs), reference.argmax(1), reference)  # int8 input and output
    assert result.cosine > 0.9


def test_conversion_error_names_the_op(tmp_path: Path) -> None:
    class Svd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(x[:, 0])

    with pytest.raises(LoweringError) as err:
        tflite.convert(Svd(), (3, 8, 8), tmp_path / "m.tflite")
    message = str(err.value)
    assert "litert-torch cannot convert op aten._linalg_svd.default" in message
    assert "\n" not in message and "test_tflite.py" in message  # one line, and where it came from
    assert not (tmp_path / "m.tflite").exists()


def test_runner_batches_through_a_batch_one_model(
    tiny_checkpoint, tiny_onnx, inputs, reference, tmp_path
) -> None:
    artifact = build(tiny_checkpoint, tiny_onnx, tmp_path, "fp32", inputs)
    assert np.allclose(run(artifact, inputs[:7]), reference[:7], atol=1e-4)


def test_interpreter_falls_back_to_tflite_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_edge_litert.interpreter import Interpreter

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import now fails
    runtime = types.ModuleType("tflite_runtime")
    runtime.interpreter = types.SimpleNamespace(Interpreter=Interpreter)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", runtime)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", runtime.interpreter)
    assert tflite.interpreter_class() is Interpreter
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(TargetUnavailableError, match="neither ai-edge-litert nor tflite-runtime"):
        tflite.interpreter_class()
