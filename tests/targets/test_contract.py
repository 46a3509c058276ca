"""One test template that every registered backend runs (skipped where its library is missing)."""

from pathlib import Path

import numpy as np
import pytest

from edgevit.check.accuracy import compare
from edgevit.errors import RecipeError
from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

BACKENDS = TARGETS.names()


def _lower(backend: str, precision: str, onnx: Path, ckpt: Path, calib: np.ndarray, out: Path) -> Path:
    target = TARGETS.get(backend)
    if not target.availability().available:
        pytest.skip(f"{backend} not installed")
    cfg = load(checkpoint=ckpt).config
    q = QuantizeStage(stage="quantize", calibration_batch=8) if precision == "int8" else None
    out.mkdir(parents=True, exist_ok=True)
    return target.lower(LowerRequest(onnx, precision, cfg, {}, q, calib, checkpoint=ckpt), out)


def _float(backend: str) -> str:
    """The backend's float precision: fp32, else fp16 (TensorRT builds fp16/int8 only)."""
    return "fp32" if "fp32" in TARGETS.get(backend).precisions else "fp16"


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_matches_torch(backend, tiny_onnx, tiny_checkpoint, inputs, reference, tmp_path) -> None:
    precision = _float(backend)
    artifact = _lower(backend, precision, tiny_onnx, tiny_checkpoint, inputs, tmp_path)
    with TARGETS.get(backend).runner(artifact, 1, (3, 32, 32)) as runner:
        out = np.concatenate([runner.infer(inputs[:5]), runner.infer(inputs[5:])])  # two batch sizes
    assert np.allclose(out, reference, atol=1e-3 if precision == "fp32" else 2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_is_close_and_smaller(backend, tiny_onnx, tiny_checkpoint, inputs, reference, tmp_path) -> None:
    artifact = _lower(backend, "int8", tiny_onnx, tiny_checkpoint, inputs, tmp_path)
    with TARGETS.get(backend).runner(artifact, 1, (3, 32, 32)) as runner:
        out = runner.infer(inputs)
    result = compare(out, reference.argmax(1), reference)
    assert result.cosine > 0.98 and result.agreement >= 0.8
    assert not np.allclose(out, reference, atol=1e-5)  # it really is quantized
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())  # .mlpackage is a dir
    assert size < 0.6 * tiny_onnx.stat().st_size


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_checks_inputs_and_needs_opening(
    backend, tiny_onnx, tiny_checkpoint, inputs, tmp_path
) -> None:
    artifact = _lower(backend, _float(backend), tiny_onnx, tiny_checkpoint, inputs, tmp_path)
    runner = TARGETS.get(backend).runner(artifact, 1, (3, 32, 32))
    with pytest.raises(RuntimeError, match="open the runner"):
        runner.infer(inputs[:1])
    with runner, pytest.raises(ValueError, match="expected float32"):
        runner.infer(inputs[:1, :, :16])


def test_quantize_scope_keeps_attention_and_patch_embed_float(tiny_onnx: Path) -> None:
    import onnx

    from edgevit.targets.graph import quantizable_nodes

    graph = onnx.load(str(tiny_onnx)).graph
    kinds = {n.name: n.op_type for n in graph.node}
    default = quantizable_nodes(tiny_onnx, QuantizeStage(stage="quantize"))
    assert default and all(kinds[n] in ("MatMul", "Gemm") for n in default)
    every = quantizable_nodes(
        tiny_onnx, QuantizeStage(stage="quantize", matmul_scope="all", patch_embed=True)
    )
    assert len(every) > len(default) and any(kinds[n] == "Conv" for n in every)


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(RecipeError, match="use one of: coreml, onnxruntime, openvino, tensorrt, tflite"):
        TARGETS.get("tensorflow")
