"""The int16 pair sums of x86 INT8 kernels without VNNI: the model against a reference of the
instructions (any host) and against ONNX Runtime's and OpenVINO's own kernels on this host (their
arithmetic is this CPU's: saturating where it has no VNNI, exact where it has)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgevit.agent import cpu_flags
from edgevit.quant.saturation import layer_excess, pair_excess
from edgevit.quant.scheme import onnxruntime_scheme, openvino_scheme
from edgevit.targets import cpu

HOST_SATURATES = cpu.saturates(cpu_flags())
K, N, M = 96, 12, 40


def _instructions(levels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """VPMADDUBSW (u8 x s8, neighbouring pairs added with int16 saturation), then VPMADDWD and
    int32 accumulation, written out in NumPy: M x N."""
    a = levels.astype(np.int64)
    w = codes.astype(np.int64)
    if a.shape[1] % 2:
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
    out = np.zeros((a.shape[0], w.shape[0]), np.int64)
    for j in range(0, a.shape[1], 2):
        pair = a[:, None, j] * w[None, :, j] + a[:, None, j + 1] * w[None, :, j + 1]
        out += np.clip(pair, -32768, 32767)
    return out


def _operands(seed: int, k: int = K, weight_max: int = 127) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, (M, k))
    codes = rng.integers(-weight_max, weight_max + 1, (N, k))
    codes[:, :8] = np.sign(codes[:, :8]) * weight_max  # some pairs of large same-sign weights
    return levels, codes


@pytest.mark.parametrize("k", [K, K + 1])  # an odd reduction is padded with a zero, as the kernels do
def test_pair_excess_is_what_the_instructions_lose(k: int) -> None:
    levels, codes = _operands(0, k)
    exact = levels @ codes.T
    excess = pair_excess(torch.tensor(levels, dtype=torch.float64), torch.tensor(codes, dtype=torch.float64))
    assert np.any(excess.numpy() != 0)
    assert np.array_equal(exact + excess.numpy().astype(np.int64), _instructions(levels, codes))


def test_seven_bit_weights_cannot_saturate() -> None:
    levels, codes = _operands(1, weight_max=64)
    levels[:] = 255
    assert np.array_equal(_instructions(levels, codes), levels @ codes.T)
    assert not onnxruntime_scheme(seven_bit=True, int16_pairs=True).saturates
    assert not openvino_scheme(seven_bit=True, int16_pairs=True).saturates
    assert onnxruntime_scheme(seven_bit=False, int16_pairs=True).saturates
    assert not onnxruntime_scheme(seven_bit=False, int16_pairs=False).saturates


def test_a_conv_reduces_over_kernel_positions_then_channels() -> None:
    """A Conv's pairs follow the NHWC im2col: (kh, kw, channel), channels padded per position to
    the backend's block (ONNX Runtime 1, oneDNN 4)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 2, stride=2, bias=False)
    levels = torch.randint(0, 256, (2, 3, 4, 4)).double()
    codes = torch.randint(-127, 128, (5, 12)).double()
    step, weight_step = 1.0, torch.ones(5, 1, dtype=torch.float64)
    for block in (1, 4):
        got = layer_excess(conv, levels, step, 0, codes, weight_step, block)
        assert got.shape == (2, 5, 2, 2)
        w = codes.reshape(5, 3, 2, 2).permute(0, 2, 3, 1)  # (out, kh, kw, c)
        w = torch.nn.functional.pad(w, (0, (-3) % block)).reshape(5, -1).numpy()
        for i, j in ((0, 0), (1, 1)):
            patch = levels[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].permute(0, 2, 3, 1)
            a = torch.nn.functional.pad(patch, (0, (-3) % block)).reshape(2, -1).numpy()
            expected = _instructions(a.astype(np.int64), w.astype(np.int64)) - a @ w.T
            assert np.allclose(got[:, :, i, j].numpy(), expected), block


def _linear(codes: np.ndarray, weight_step: float) -> nn.Linear:
    linear = nn.Linear(codes.shape[1], codes.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(codes * weight_step, dtype=torch.float32))
    return linear


def _expected(x: np.ndarray, step: float, zero: int, codes: np.ndarray, weight_step: float) -> tuple:
    """(exact, saturated) outputs of the INT8 MatMul of ``x`` (on the grid) by ``codes``."""
    levels = np.clip(np.round(x / step) + zero, 0, 255)
    exact = step * weight_step * ((levels - zero) @ codes.T)
    excess = layer_excess(
        _linear(codes, weight_step),
        torch.tensor(x, dtype=torch.float64),
        step,
        zero,
        torch.tensor(codes, dtype=torch.float64),
        torch.full((codes.shape[0], 1), weight_step, dtype=torch.float64),
    ).numpy()
    return exact, exact + excess


def _qdq_matmul(path: Path, step: float, zero: int, codes: np.ndarray, weight_step: float) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "sw"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, codes.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, codes.shape[0]])],
        [
            numpy_helper.from_array(np.array(step, np.float32), "sx"),
            numpy_helper.from_array(np.array(zero, np.uint8), "zx"),
            numpy_helper.from_array(codes.T.astype(np.int8), "w"),
            numpy_helper.from_array(np.array(weight_step, np.float32), "sw"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _inputs(step: float, zero: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, (M, K))
    return ((levels - zero) * step).astype(np.float32)  # exactly on the grid


def _check(got: np.ndarray, exact: np.ndarray, saturated: np.ndarray) -> None:
    tolerance = 1e-4 * float(np.abs(exact).max())
    assert float(np.abs(saturated - exact).max()) > 100 * tolerance  # these operands do saturate
    expected = saturated if HOST_SATURATES else exact
    assert np.allclose(got, expected, atol=tolerance), (HOST_SATURATES, np.abs(got - expected).max())


def test_onnxruntime_kernels_on_this_host_add_as_the_model_says(tmp_path: Path) -> None:
    """On a host without VNNI, MLAS saturates as modelled; with VNNI it is exact."""
    pytest.importorskip("onnxruntime")
    from edgevit.agent import OrtSession

    step, zero, weight_step = 0.02, 120, 0.01
    _, codes = _operands(4)
    x = _inputs(step, zero)
    exact, saturated = _expected(x, step, zero, codes, weight_step)
    got = OrtSession(_qdq_matmul(tmp_path / "m.onnx", step, zero, codes, weight_step), 1)(x)
    _check(got, exact, saturated)


def test_openvino_kernels_on_this_host_add_as_the_model_says() -> None:
    """The same for OpenVINO's oneDNN kernels, on the graph NNCF writes (FakeQuantize on the
    activation, INT8 weight constants scaled per channel)."""
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    step, zero, weight_step = 0.02, 120, 0.01
    lo, hi = -zero * step, (255 - zero) * step
    _, codes = _operands(5)
    x = _inputs(step, zero)
    exact, saturated = _expected(x, step, zero, codes, weight_step)
    param = ops.parameter([M, K], np.float32, name="x")
    bounds = [np.float32(v) for v in (lo, hi, lo, hi)]
    fq = ops.fake_quantize(param, *bounds, 256)
    weights = ops.multiply(
        ops.convert(ops.constant(codes.astype(np.int8)), np.float32),
        ops.constant(np.full((N, 1), weight_step, np.float32)),
    )
    model = ov.Model([ops.matmul(fq, weights, False, True)], [param])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    _check(compiled(x)[0], exact, saturated)


def test_a_saturating_grid_simulates_trains_and_floats_layers(tiny_checkpoint: Path) -> None:
    """In the simulator, what the pairs lose reaches the model's output; a layer switched back to
    float loses nothing; quantization-aware training runs through it (the loss is passed through
    as a constant)."""
    from edgevit.models.load import load
    from edgevit.quant.outliers import add_outliers
    from edgevit.quant.simulate import simulation

    model = load(checkpoint=tiny_checkpoint).model.eval()
    add_outliers(model, channels=2, seed=0)  # large LayerNorm outputs, whose weights overflow pairs
    calibration = np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(calibration[:4])
    exact = simulation(model, onnxruntime_scheme(seven_bit=False), calibration)
    pairs = simulation(model, onnxruntime_scheme(seven_bit=False, int16_pairs=True), calibration)
    with torch.no_grad():
        assert not torch.allclose(pairs.model(x), exact.model(x), atol=1e-3)
        with pairs.floating(pairs.layers) as floated, exact.floating(exact.layers) as reference:
            assert torch.allclose(floated(x), reference(x), atol=1e-5)
    trained = simulation(
        model, onnxruntime_scheme(seven_bit=False, int16_pairs=True), calibration, trainable=True
    )
    with torch.no_grad():
        assert torch.allclose(trained.model(x), pairs.model(x), rtol=1e-4, atol=1e-4)
    trained.model(x).square().mean().backward()
    grads = [p.grad for p in trained.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
