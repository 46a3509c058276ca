"""GPTQ rounding: on each backend's own weight grid, by hand on small cases, better than nearest."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.models.load import load
from edgevit.quant import scheme as S
from edgevit.quant.gptq import DAMPING, gptq, output_error, round_weight
from edgevit.quant.simulate import LINEAR, Scope, fold_norms, simulate

GRIDS = {
    "tensorrt": S.tensorrt_scheme(),
    "onnxruntime-7bit": S.onnxruntime_scheme(True),  # levels -64..64
    "onnxruntime-u8": S.onnxruntime_scheme(False, unsigned_weights=True),  # a step of absmax / 127.5
    "openvino-7bit": S.openvino_scheme(True, smooth_alpha=None),  # absmax is 63.5 steps, ties to even
    "per-tensor": S.tensorrt_scheme(per_channel=False),
}


def _correlated(rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the second moment of inputs whose channels are correlated, as a ViT's are."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(4096, cols, generator=g, dtype=torch.float64) @ mix.double()
    return weight, x.T @ x / len(x)


@pytest.mark.parametrize("grid", GRIDS)
def test_the_backend_quantizer_gives_back_gptq_levels(grid: str) -> None:
    scheme = GRIDS[grid]
    weight, moment = _correlated(24, 40)
    rounded, levels = round_weight(weight, moment, scheme)
    codes, step = scheme.weight_codes(rounded)  # what the backend's own quantizer makes of it
    assert torch.equal(codes, levels)
    assert torch.allclose(step, scheme.weight_codes(weight)[1])  # each channel's step is unchanged
    assert bool((rounded != weight).any())


def test_uncorrelated_inputs_round_to_nearest() -> None:
    scheme = S.tensorrt_scheme()
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    moment = torch.diag(torch.rand(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5)
    _, levels = round_weight(weight, moment, scheme)
    assert torch.equal(levels, scheme.weight_codes(weight)[0])


def test_each_rounding_error_is_compensated_as_by_hand() -> None:
    """One channel of three weights, the last its largest (pinned at level 127): the first column
    (largest input energy) is rounded first and its error moved onto the others by the optimal
    brain surgeon's update ``-e · H⁻¹[0, j] / H⁻¹[0, 0]`` (H damped), then the second likewise."""
    scheme = S.tensorrt_scheme()
    w = np.array([0.3049, -0.2, 1.0])  # -25.4 steps: the first column's error moves it past -25.5
    h = np.array([[3.0, 1.2, 0.4], [1.2, 2.0, 0.7], [0.4, 0.7, 1.0]])
    damped = h + DAMPING * np.trace(h) / 3 * np.eye(3)
    step = 1.0 / 127
    expected, rest, hd = [], w.copy(), damped.copy()
    for _ in range(2):
        level = np.round(rest[0] / step)
        expected.append(level)
        inv = np.linalg.inv(hd)
        rest = rest[1:] - (rest[0] - level * step) * inv[0, 1:] / inv[0, 0]
        hd = hd[1:, 1:]
    _, levels = round_weight(torch.tensor([w]), torch.tensor(h), scheme)
    assert levels[0].tolist() == [*expected, 127.0]
    assert expected != [np.round(w[0] / step), np.round(w[1] / step)]  # compensation moved a level


def test_gptq_beats_nearest_on_correlated_inputs() -> None:
    scheme = S.tensorrt_scheme()
    weight, moment = _correlated(64, 96, seed=3)
    rounded, _ = round_weight(weight, moment, scheme)
    nearest = output_error(weight, scheme.quantize_weight(weight), moment)
    assert output_error(weight, rounded, moment) < 0.6 * nearest


def test_norm_scales_fold_without_shifts_and_keep_the_function(tiny_checkpoint: Path) -> None:
    model = load(checkpoint=tiny_checkpoint).model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # γ and β away from 1 and 0
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    folded = copy.deepcopy(model)
    names = fold_norms(folded, shifts=False)
    assert names and set(dict(folded.named_parameters())) == set(dict(model.named_parameters()))
    assert all(bool((folded.get_submodule(n).weight == 1).all()) for n in names)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(folded(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_gptq_on_a_model_keeps_its_grid_and_gains_in_the_simulator(tiny_checkpoint: Path) -> None:
    model = load(checkpoint=tiny_checkpoint).model.eval()
    # 48 images of 17 tokens: at least a row per input channel of every layer (fc2 reads 768)
    calibration = np.random.default_rng(0).uniform(-1, 1, (48, 3, 32, 32)).astype(np.float32)
    scheme = S.tflite_dynamic_scheme()  # folds the norms' γ first, as the converter does
    rounded = copy.deepcopy(model)
    record = gptq(rounded, scheme, calibration, Scope(float_layers=("head",)))
    assert "head" not in record.layers and "blocks.0.mlp.fc2" in record.layers
    assert record.gptq_db > record.nearest_db
    assert record.folded_norms == ("blocks.0.norm1", "blocks.0.norm2")
    for name in record.layers:
        weight = rounded.get_submodule(name).weight.detach()
        codes, step = scheme.weight_codes(weight)
        on_grid = (codes * step - weight).abs() <= 1e-6 * weight.abs().amax()
        assert int((~on_grid).sum()) <= weight.shape[0]  # only each channel's pinned largest weight
    x = torch.from_numpy(calibration)

    def sqnr(candidate: torch.nn.Module) -> float:
        with torch.no_grad():
            ref, out = model(x), simulate(candidate, scheme, calibration, LINEAR)(x)
        return float(10 * torch.log10((ref**2).sum() / ((out - ref) ** 2).sum()))

    assert sqnr(rounded) > sqnr(model)


def test_smoothquant_grids_are_not_rounded(tiny_checkpoint: Path) -> None:
    model = load(checkpoint=tiny_checkpoint).model.eval()
    before = copy.deepcopy(model.state_dict())
    calibration = np.zeros((4, 3, 32, 32), np.float32)
    record = gptq(model, S.openvino_scheme(False), calibration, LINEAR)
    assert record.skipped and "smooth_quant_alpha: -1" in record.skipped and not record.layers
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_small_memory_budget_rounds_the_same(tiny_checkpoint: Path) -> None:
    """Layers whose input statistics do not fit at once are rounded a group per calibration pass,
    each from the float model's inputs: the same weights as in one pass."""
    model = load(checkpoint=tiny_checkpoint).model.eval()
    calibration = np.random.default_rng(1).uniform(-1, 1, (48, 3, 32, 32)).astype(np.float32)
    whole, parts = copy.deepcopy(model), copy.deepcopy(model)
    gptq(whole, S.tensorrt_scheme(), calibration, LINEAR)
    record = gptq(parts, S.tensorrt_scheme(), calibration, LINEAR, budget=1)  # a layer per pass
    # the classifier reads one pooled row per image, 48 for 192 inputs: left to round to nearest
    assert len(record.layers) == 4 and record.too_few_rows == ("head",)
    assert torch.equal(parts.head.weight, model.head.weight)
    for name in record.layers:
        assert torch.equal(whole.get_submodule(name).weight, parts.get_submodule(name).weight), name
