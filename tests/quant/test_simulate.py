"""The INT8 simulator against the real artifacts: the same logit SQNR to float, per backend."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.agent import cpu_flags
from edgevit.check.layerwise import sqnr_db
from edgevit.models.load import load, save
from edgevit.quant.outliers import add_outliers
from edgevit.quant.scheme import Int8Scheme
from edgevit.quant.simulate import Scope, simulate
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets import TARGETS, LowerRequest
from edgevit.targets.cpu import saturates

pytest.importorskip("onnxruntime")

CPU_BACKENDS = ("onnxruntime", "openvino")

# (backend, options, the largest |simulated - artifact| logit SQNR in dB on the tiny model): the
# QDQ grids are the simulator's exactly; OpenVINO's SmoothQuant, TFLite's folding and Core ML's FP16
# compute are modelled less closely (the issue's bound is 1.5 dB). The CPU backends' 8-bit weights
# run this host's kernels: on an x86 CPU without VNNI they add products in saturating int16 pairs,
# which their grid then models (measured on an AVX2 host: within 0.15 dB, where ignoring it was
# 5-15 dB off), and on a VNNI one they are exact, which it models too.
CASES = [
    ("onnxruntime", {"reduce_range": False}, 0.5),  # UINT8 weights where the CPU would saturate INT8 ones
    ("onnxruntime", {"reduce_range": True, "unsigned_weights": False}, 0.5),
    ("tensorrt", {}, 0.5),
    ("onnxruntime", {"input_ranges": "mse"}, 0.5),  # ranges shrunk by the least-error factor
    ("tensorrt", {"input_ranges": "mse"}, 0.5),
    ("openvino", {}, 1.5),
    ("openvino", {"reduce_range": False}, 1.5),
    ("tflite", {}, 1.5),
    ("tflite", {"mode": "dynamic"}, 1.5),  # per-row activation grids made at run time
    ("coreml", {"mode": "w8a8"}, 1.5),
]


def _exported(
    checkpoint: Path, tmp_path: Path, outliers: bool
) -> tuple[Any, nn.Module, np.ndarray, np.ndarray, np.ndarray, Path]:
    """The tiny model (with function-preserving outliers), 32 calibration and 48 evaluation images
    (seeded), the model's outputs on them, and its ONNX export."""
    loaded = load(checkpoint=checkpoint)
    model = copy.deepcopy(loaded.model).eval()
    if outliers:
        add_outliers(model, channels=2, seed=0)
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32)
    images = rng.uniform(-1, 1, (48, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    onnx_path = export_onnx(model, loaded.config.input_size, tmp_path / "model.onnx")
    return loaded, model, calibration, images, reference, onnx_path


@pytest.mark.parametrize(
    ("outliers", "widest"),
    [(False, False), (True, False), (False, True)],
    ids=["original", "outliers", "widest"],
)
def test_simulator_matches_the_artifacts(
    outliers: bool, widest: bool, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Widest: the attention matmuls and the patch embedding quantized too (``matmul_scope: all``)."""
    loaded, model, calibration, images, reference, onnx_path = _exported(tiny_checkpoint, tmp_path, outliers)
    stage = QuantizeStage(
        stage="quantize",
        calibration_batch=16,
        matmul_scope="all" if widest else "weights",
        patch_embed=widest,
    )
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save(model, loaded.config, checkpoint)
    for i, (backend, options, tolerance) in enumerate(CASES):
        target = TARGETS.get(backend)
        if not target.availability().available:
            continue
        out = tmp_path / f"{backend}-{i}"
        out.mkdir()
        request = LowerRequest(
            onnx_path, "int8", loaded.config, options, stage, calibration, checkpoint=checkpoint
        )
        scheme = target.int8_scheme(request)  # the grid the target reads to build
        assert scheme is not None and scheme.backend == backend
        # the arithmetic of the CPU that runs the artifact: this host's
        assert scheme.int16_pairs is (backend in CPU_BACKENDS and saturates(cpu_flags())), scheme
        artifact = target.lower(request, out)
        with target.runner(artifact, 1, loaded.config.input_size) as runner:
            built = sqnr_db(reference, runner.infer_all(images, 16))
        with torch.no_grad():
            simulated = sqnr_db(
                reference,
                simulate(model, scheme, calibration, Scope.of(stage))(torch.from_numpy(images)).numpy(),
            )
        assert abs(simulated - built) < tolerance, (backend, scheme, built, simulated)


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


def test_dynamic_rows_get_their_own_grid() -> None:
    """TFLite's dynamic-range kernels quantize each row (token) over its own range: a row of large
    values does not coarsen the grid of a row of small ones, and zero stays exact."""
    from edgevit.quant.scheme import tflite_dynamic_scheme

    scheme = tflite_dynamic_scheme()
    x = torch.tensor([[[0.0123, -0.02, 0.03, 0.0], [100.0, -50.0, 25.0, 0.0]]])
    y = scheme.quantize_activation(x, -1.0, 1.0)  # the calibrated range is not used
    assert torch.allclose(y[0, 0], x[0, 0], atol=0.05 / 255)  # its own step: 0.05/255
    assert torch.allclose(y[0, 1], x[0, 1], atol=150 / 255)
    assert float(y[0, 0, 3]) == 0.0 and float(y[0, 1, 3]) == 0.0
    # by hand: the first row's grid spans [-0.02, 0.03] in 255 steps, and 0.0123 is 62.73 of them
    assert float(y[0, 0, 0]) == pytest.approx(63 * 0.05 / 255, abs=1e-7)
    assert scheme.tag == "tflite-w8-dynamic"


def test_a_layer_switched_back_to_float_computes_in_float(tiny_checkpoint: Path) -> None:
    from edgevit.quant.scheme import onnxruntime_scheme
    from edgevit.quant.simulate import simulation

    model = load(checkpoint=tiny_checkpoint).model.eval()
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(calibration[:4])
    sim = simulation(model, onnxruntime_scheme(seven_bit=False), calibration)
    with torch.no_grad():
        reference, quantized = model(x), sim.model(x)
        with sim.floating(sim.layers) as floated:
            assert torch.allclose(floated(x), reference, atol=1e-5)  # every layer float: the float model
        with sim.floating([sim.layers[0]]) as floated:
            one = floated(x)
        assert torch.equal(sim.model(x), quantized)  # switched back on leaving
    assert not torch.allclose(quantized, reference, atol=1e-5)
    assert sqnr_db(reference.numpy(), one.numpy()) != sqnr_db(reference.numpy(), quantized.numpy())


def test_tflite_grid_folds_the_block_norms_into_their_linears(tiny_checkpoint: Path) -> None:
    from edgevit.quant.simulate import fold_norms

    model = load(checkpoint=tiny_checkpoint).model.eval()
    add_outliers(model, channels=2, seed=0)
    folded = copy.deepcopy(model)
    names = fold_norms(folded)
    assert names and all(n.startswith("blocks.") for n in names)  # the final norm (pooled) is kept
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-4)
        norm = folded.get_submodule(names[0])
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_fast_fake_quantization_equals_torchs_reference_op() -> None:
    from edgevit.quant.scheme import fake_quantize

    x = torch.randn(4, 17, 64) * 5  # past every range below: clipping included
    for scale, zero, qmin, qmax in ((4 / 255, 100, 0, 255), (3 / 127, 0, -127, 127), (0.5, 0, -128, 127)):
        expected = torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)
        assert torch.equal(fake_quantize(x, scale, zero, qmin, qmax), expected), (scale, zero, qmin)
    grad = x.clone().requires_grad_()  # the differentiable path (quantization-aware training)
    assert fake_quantize(grad, 0.1, 0, -127, 127).requires_grad


def test_each_grid_quantizes_the_attention_inputs_its_backend_does() -> None:
    from edgevit.models.load import create
    from edgevit.quant.scheme import coreml_scheme, onnxruntime_scheme, openvino_scheme
    from edgevit.quant.simulate import quantized_inputs

    model = create("vit_plus_tiny_patch8_32", num_classes=10, depth=1, ms_scales=(1, 2))
    attn = model.blocks[0].attn
    assert [scale for _, _, scale in attn.groups] == [1, 2]
    ort, ov, coreml = onnxruntime_scheme(False), openvino_scheme(False), coreml_scheme()
    assert quantized_inputs(model, "blocks.0.attn.av.1", ort) == (0, 1)
    # OpenVINO's fused attention: q always, k where it is not pooled, v and the weights never
    assert quantized_inputs(model, "blocks.0.attn.qk.0", ov) == (0, 1)
    assert quantized_inputs(model, "blocks.0.attn.qk.1", ov) == (0,)
    assert quantized_inputs(model, "blocks.0.attn.av.0", ov) == ()
    assert quantized_inputs(model, "blocks.0.attn.qk.0", coreml) == ()
    assert quantized_inputs(model, "blocks.0.attn.qkv", coreml) == (0,)
    x = torch.tensor([-1.0, 0.5, 2.0])  # NNCF quantizes those inputs on a symmetric grid
    assert float(ov.quantize_attention_input(x, -1.0, 2.0)[0]) == pytest.approx(-1.0, abs=1 / 127)
    assert float(ov.quantize_activation(torch.tensor([-1.0]), 0.5, 2.0)[0]) == 0.0


def test_float_linear_outputs_leave_no_qdq_after_a_matmul_and_the_simulator_follows(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``linear_outputs: float``: ONNX Runtime's and TensorRT's artifacts quantize each Linear's
    input and weight only, and the simulator's grid (``quantize_outputs`` off) matches them."""
    import onnx

    loaded, model, calibration, images, reference, onnx_path = _exported(tiny_checkpoint, tmp_path, True)
    stage = QuantizeStage(stage="quantize", calibration_batch=16, linear_outputs="float")
    for i, (backend, options) in enumerate(
        [("onnxruntime", {"reduce_range": False}), ("onnxruntime", {}), ("tensorrt", {})]
    ):
        target = TARGETS.get(backend)
        out = tmp_path / f"{backend}-{i}"
        out.mkdir()
        request = LowerRequest(onnx_path, "int8", loaded.config, options, stage, calibration)
        scheme = target.int8_scheme(request)
        assert scheme is not None and not scheme.quantize_outputs
        artifact = target.lower(request, out)
        graph = onnx.load(artifact).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        quantized = [producers.get(n.input[0]) for n in graph.node if n.op_type == "QuantizeLinear"]
        assert "MatMul" not in quantized and "Gemm" not in quantized, quantized
        assert quantized, "the Linear inputs are still quantized"
        with target.runner(artifact, 1, loaded.config.input_size) as runner:
            built = sqnr_db(reference, runner.infer_all(images, 16))
        with torch.no_grad():
            simulated = sqnr_db(
                reference, simulate(model, scheme, calibration)(torch.from_numpy(images)).numpy()
            )
        assert abs(simulated - built) < 0.5, (backend, options, built, simulated)
