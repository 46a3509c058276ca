"""The Core ML target: modes, the saved package's interface, the simulated check, the macOS path."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgevit.check.accuracy import compare
from edgevit.devices import CoreMLSettings, DeviceProfile
from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest

pytest.importorskip("coremltools")

from edgevit.targets import coreml
from edgevit.targets.coreml_mil import MilReference, load_program

TARGET = TARGETS.get("coreml")
IPHONE = DeviceProfile(name="phone", transport="none", coreml=CoreMLSettings(compute_units="CPU_AND_NE"))


def build(
    ckpt: Path,
    onnx: Path,
    out: Path,
    precision: str,
    calib: np.ndarray,
    options: dict | None = None,
    float_layers: list[str] | None = None,
    linear_outputs: str = "int8",
) -> Path:
    cfg = load(checkpoint=ckpt).config
    stage = (
        QuantizeStage(
            stage="quantize",
            calibration_batch=8,
            float_layers=float_layers or [],
            linear_outputs=linear_outputs,
        )
        if precision == "int8"
        else None
    )
    out.mkdir(parents=True, exist_ok=True)
    request = LowerRequest(
        onnx, precision, cfg, options or {}, stage, calib[:8], checkpoint=ckpt, device=IPHONE
    )
    return TARGET.lower(request, out)


def run(artifact: Path, x: np.ndarray) -> np.ndarray:
    with TARGET.runner(artifact, 1, (3, 32, 32), IPHONE) as runner:
        assert runner.simulated == "mil-reference"  # no Core ML runtime on Linux
        return runner.infer(x)


@pytest.fixture(scope="module")
def packages(tiny_checkpoint, tiny_onnx, inputs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml")
    plan = {
        "fp16": ("fp16", None),
        "weights": ("int8", None),
        "w8a8": ("int8", {"mode": "w8a8"}),
        "int4": ("fp16", {"mode": "int4_block"}),
    }
    return {
        name: build(tiny_checkpoint, tiny_onnx, root / name, precision, inputs, options)
        for name, (precision, options) in plan.items()
    }


def test_package_reloads_with_the_model_interface(packages, tiny_checkpoint) -> None:
    cfg = load(checkpoint=tiny_checkpoint).config
    prog, spec = load_program(packages["fp16"])
    (inp,) = spec.description.input
    (out,) = spec.description.output
    assert inp.name == "input" and list(inp.type.multiArrayType.shape) == [1, *cfg.input_size]
    assert inp.type.multiArrayType.dataType == inp.type.multiArrayType.FLOAT32
    assert out.name == "logits"
    assert prog.functions["main"].outputs[0].shape == (1, cfg.num_classes)
    meta = spec.description.metadata.userDefined
    assert json.loads(meta["edgevit.class_names"]) == cfg.class_names
    assert json.loads(meta["edgevit.mean"]) == list(cfg.mean)
    assert meta["edgevit.deployment_target"] == "iOS17"
    assert TARGET.describe(packages["fp16"])["coreml"]["interface"] == {
        "input": {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"},
        "output": {"name": "logits"},
        "class_names": cfg.class_names,
    }


def test_fp16_keeps_layer_norm_in_fp32_and_matches_torch(packages, inputs, reference) -> None:
    info = TARGET.describe(packages["fp16"])
    assert info["ops"]["layer_norm"] == {"fp32": 3}  # 1 block: 2 norms + the final one
    assert info["ops"]["softmax"] == {"fp16": sum(info["ops"]["softmax"].values())}
    acc = compare(run(packages["fp16"], inputs), np.zeros(len(inputs), np.int64), reference)
    assert acc.agreement == 1.0 and acc.cosine > 0.9999


def test_int8_weights_compress_only_the_linear_layers(packages, inputs, reference) -> None:
    info = TARGET.describe(packages["weights"])
    assert set(info["ops"]["conv"]) == {"fp16"}  # the patch embedding stays float (quantize stage default)
    assert "fp16 (int8 weights)" in info["ops"]["linear"]
    assert info["coreml"]["compressed_weights"]["int8"] >= 4
    acc = compare(run(packages["weights"], inputs), np.zeros(len(inputs), np.int64), reference)
    assert acc.cosine > 0.999
    fp16_size = sum(p.stat().st_size for p in packages["fp16"].rglob("*") if p.is_file())
    int8_size = sum(p.stat().st_size for p in packages["weights"].rglob("*") if p.is_file())
    assert int8_size < 0.7 * fp16_size


def test_w8a8_quantizes_linear_inputs_not_norms_softmax_or_adds(packages, inputs, reference) -> None:
    ops = TARGET.describe(packages["w8a8"])["ops"]
    assert ops["quantize"] and set(ops["quantize"]) == {"int8"}
    assert all("int8 input" in label for label in ops["linear"])
    for kind in ("layer_norm", "softmax", "matmul", "conv"):
        assert not any("int8 input" in label for label in ops[kind]), kind
    assert not (packages["w8a8"].parent / "float.mlpackage").exists()  # the intermediate is removed
    acc = compare(run(packages["w8a8"], inputs), np.zeros(len(inputs), np.int64), reference)
    assert acc.cosine > 0.99


def _linear_output_quantizers(artifact: Path) -> int:
    program, _ = load_program(artifact)
    ops = program.functions["main"].operations
    return sum(op.op_type == "quantize" and op.inputs["input"].op.op_type == "linear" for op in ops)


def test_w8a8_with_float_linear_outputs_quantizes_only_their_inputs(
    packages, tiny_checkpoint, tiny_onnx, inputs, reference, tmp_path
) -> None:
    """``quantize.linear_outputs: float``: no quantize/dequantize after a linear, its input and
    weight still INT8, and the simulator's grid without them matches the artifact."""
    import torch

    from edgevit.check.layerwise import sqnr_db
    from edgevit.quant.simulate import Scope, simulate

    artifact = build(
        tiny_checkpoint, tiny_onnx, tmp_path / "out", "int8", inputs, {"mode": "w8a8"}, None, "float"
    )
    assert _linear_output_quantizers(packages["w8a8"]) == 4  # qkv, proj, fc1, fc2 (the head's is the output)
    assert _linear_output_quantizers(artifact) == 0
    assert all("int8 input" in label for label in TARGET.describe(artifact)["ops"]["linear"])
    loaded = load(checkpoint=tiny_checkpoint)
    stage = QuantizeStage(stage="quantize", calibration_batch=8, linear_outputs="float")
    request = LowerRequest(tiny_onnx, "int8", loaded.config, {"mode": "w8a8"}, stage, inputs[:8])
    scheme = TARGET.int8_scheme(request)
    assert scheme is not None and not scheme.quantize_outputs
    with torch.no_grad():
        simulated = simulate(loaded.model.eval(), scheme, inputs[:8], Scope.of(stage))(
            torch.from_numpy(inputs)
        )
    built = sqnr_db(reference, run(artifact, inputs))
    assert abs(sqnr_db(reference, simulated.numpy()) - built) < 1.5
    assert built > sqnr_db(reference, run(packages["w8a8"], inputs))


def test_float_layers_keep_float_weights_and_inputs(
    packages, tiny_checkpoint, tiny_onnx, inputs, tmp_path
) -> None:
    from edgevit.errors import LoweringError

    # head (192x10 weights) is under coremltools' 2048-element threshold: never compressed.
    every = ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert TARGET.quantized_layers(packages["weights"], tiny_onnx) == every
    assert TARGET.quantized_layers(packages["w8a8"], tiny_onnx) == every
    assert TARGET.quantized_layers(packages["fp16"], tiny_onnx) == []
    kept = ["blocks.0.mlp.fc1", "blocks.0.attn.qkv"]
    for mode in ("weights", "w8a8"):
        artifact = build(tiny_checkpoint, tiny_onnx, tmp_path / mode, "int8", inputs, {"mode": mode}, kept)
        assert TARGET.quantized_layers(artifact, tiny_onnx) == [x for x in every if x not in kept], mode
        linear = TARGET.describe(artifact)["ops"]["linear"]
        # The two kept layers compute fp16 with float weights and inputs, as does head in weights
        # mode (in w8a8 its input is int8); the other two have int8 weights.
        assert linear.get("fp16") == {"weights": 3, "w8a8": 2}[mode], (mode, linear)
        assert sum(n for k, n in linear.items() if "int8 weights" in k) == 2, (mode, linear)
    with pytest.raises(LoweringError, match=r"float_layers names blocks\.5\.mlp, not a layer"):
        build(tiny_checkpoint, tiny_onnx, tmp_path / "u", "int8", inputs, None, ["blocks.5.mlp"])


def test_a_mode_that_needs_a_newer_os_raises_the_deployment_target(packages) -> None:
    info = TARGET.describe(packages["int4"])["coreml"]
    assert info["deployment_target"] == "iOS18" and info["compressed_weights"].get("int4")
    settings = CoreMLSettings(deployment_target="iOS16")
    assert coreml.deployment_target(settings, "w8a8") == "iOS17"
    assert coreml.deployment_target(settings, "weights") == "iOS16"
    assert coreml.deployment_target(CoreMLSettings(deployment_target="macOS13"), "palettize4") == "macOS15"


@pytest.mark.parametrize(
    ("precision", "options", "message"),
    [
        ("fp16", {"mode": "w8a8"}, "mode w8a8 is not for fp16"),
        ("int8", {"mode": "palettize4"}, "mode palettize4 is not for int8"),
        ("fp32", {"float32_ops": ["softmax"]}, "float32_ops applies to FP16"),
        ("int8", {"input_ranges": "mse"}, "input_ranges sets the INT8 activation grids of mode w8a8"),
    ],
)
def test_options_are_checked_against_the_precision(precision, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        TARGET.parse_options(options, precision)


def test_fp16_layer_norm_overflow_is_detected(tiny_checkpoint, tiny_onnx, tmp_path) -> None:
    """Huge activations: an FP16 LayerNorm would overflow; the default keeps it in FP32."""
    loud = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32) * 3000
    risky = build(tiny_checkpoint, tiny_onnx, tmp_path / "r", "fp16", loud, {"float32_ops": []})
    ref = MilReference(risky)
    ref.run({"input": loud[:1]})
    assert ref.findings()["layer_norm_fp16_overflow"]
    safe = MilReference(build(tiny_checkpoint, tiny_onnx, tmp_path / "s", "fp16", loud))
    safe.run({"input": loud[:1]})
    assert not safe.findings()["layer_norm_fp16_overflow"]


class StandIn:
    """Stands in for coremltools.models.MLModel on macOS (Core ML's predict cannot run on Linux)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["input"]
        self.calls.append(x.shape)
        return {"logits": x.reshape(1, -1)[:, :10].astype(np.float64)}


def test_macos_path_predicts_one_image_at_a_time(tmp_path, monkeypatch) -> None:
    model = StandIn()
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    out = coreml.predict_batch(model, batch)
    assert model.calls == [(1, 3, 32, 32)] * 3 and out.dtype == np.float32
    np.testing.assert_array_equal(out, batch.reshape(3, -1)[:, :10])
    monkeypatch.setattr(coreml, "coreml_runtime_available", lambda: True)
    runner = TARGET.runner(tmp_path / "m.mlpackage", 1, (3, 32, 32), IPHONE)
    assert isinstance(runner, coreml.CoremlRunner) and runner.simulated is None
    assert runner.compute_units == "CPU_AND_NE"  # from the device profile
    assert runner.findings() == {"coreml_runtime": {"compute_units": "CPU_AND_NE"}}


def test_core_ml_runtime_is_not_claimed_on_linux() -> None:
    import platform

    if platform.system() != "Darwin":
        assert not coreml.coreml_runtime_available()
