"""INT8 weight range for CPU runtimes: 7-bit weights on x86 CPUs without VNNI (targets/cpu.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevit.devices import DeviceProfile, resolve_device
from edgevit.models.load import load
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS, LowerRequest, cpu

AVX2 = ["avx2"]
VNNI = ["avx2", "avx512f", "avx512_vnni"]
REMOTE = {"transport": "ssh", "address": "ssh://u@box"}


def test_only_x86_without_vnni_saturates() -> None:
    assert cpu.saturates(AVX2)
    assert not cpu.saturates(VNNI)
    assert not cpu.saturates(["avx2", "avx_vnni"]) and not cpu.saturates(["avx2", "amx_int8"])
    assert not cpu.saturates(["asimd"])  # Arm


def test_the_int8_grid_models_the_arithmetic_of_the_cpu_that_runs_it(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path, tiny_checkpoint: Path
) -> None:
    import edgevit.agent

    cfg = load(checkpoint=tiny_checkpoint).config
    stage = QuantizeStage(stage="quantize")
    for flags, pairs in ((AVX2, True), (VNNI, False)):
        monkeypatch.setattr(edgevit.agent, "cpu_flags", lambda f=flags: f)
        for backend in ("onnxruntime", "openvino"):
            for reduce in (True, False):
                request = LowerRequest(tiny_onnx, "int8", cfg, {"reduce_range": reduce}, stage, None)
                scheme = TARGETS.get(backend).int8_scheme(request)
                assert scheme is not None and scheme.int16_pairs is pairs, (backend, flags)
                # 7-bit weights cannot leave int16: only 8-bit ones on such a CPU are modelled; ONNX
                # Runtime's UINT8 weights (its default there) go through kernels that do not saturate
                assert scheme.weight_unsigned is (pairs and backend == "onnxruntime")
                assert scheme.saturates is (pairs and not reduce and backend == "openvino")
                assert scheme.tag.endswith("-i16") is scheme.saturates
    remote = DeviceProfile(name="box", **REMOTE)  # unknown CPU: assumed to saturate, as for the range
    request = LowerRequest(tiny_onnx, "int8", cfg, {}, stage, None, device=remote)
    assert cpu.int16_pairs(request)
    assert not TARGETS.get("tensorrt").int8_scheme(request).int16_pairs  # a GPU accumulates in int32


def test_reduce_range_follows_the_cpu_that_runs_the_artifact(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgevit.agent

    monkeypatch.setattr(edgevit.agent, "cpu_flags", lambda: AVX2)
    assert cpu.reduce_range(None, None) is True  # this host
    assert cpu.reduce_range(None, resolve_device("x86-avx512")) is True  # local: the host's own flags
    monkeypatch.setattr(edgevit.agent, "cpu_flags", lambda: VNNI)
    assert cpu.reduce_range(None, None) is False
    remote = DeviceProfile(name="box", **REMOTE)
    assert cpu.reduce_range(None, remote) is True  # unknown CPU: 7 bits cannot overflow anywhere
    assert cpu.reduce_range(None, remote.model_copy(update={"cpu_flags": VNNI})) is False
    assert cpu.reduce_range(None, resolve_device("raspberry-pi-5")) is False  # profile: asimd
    assert cpu.reduce_range(True, remote.model_copy(update={"cpu_flags": VNNI})) is True  # the recipe wins


def _int8_weights_max(artifact: Path) -> int:
    """The largest |value| of the artifact's INT8 weight constants."""
    if artifact.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(artifact))
        values = [
            numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
        ]
    else:
        import openvino as ov

        ops = ov.Core().read_model(str(artifact)).get_ordered_ops()
        values = [
            op.get_data()
            for op in ops
            if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
        ]
    assert values, "no INT8 weights"
    return max(int(np.abs(v.astype(np.int32)).max()) for v in values)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_reduce_range_gives_7_bit_weights(backend, tiny_checkpoint, tiny_onnx, inputs, tmp_path) -> None:
    target = TARGETS.get(backend)
    if not target.availability().available:
        pytest.skip(f"{backend} is not installed")
    cfg = load(checkpoint=tiny_checkpoint).config
    stage = QuantizeStage(stage="quantize", calibration_batch=8)
    found = {}
    for choice in (True, False):
        out = tmp_path / str(choice)
        out.mkdir()
        signed = {"unsigned_weights": False} if backend == "onnxruntime" else {}
        request = LowerRequest(tiny_onnx, "int8", cfg, {"reduce_range": choice, **signed}, stage, inputs)
        from edgevit.agent import cpu_flags

        settings = target.build_settings(request)
        assert settings.pop("int8_weight_type", "int8") == "int8"
        assert settings == {
            "int8_weight_bits": 7 if choice else 8,
            "int8_pair_sums": "int16, saturating" if cpu.saturates(cpu_flags()) else "int32",
        }
        found[choice] = _int8_weights_max(target.lower(request, out))
    assert found[True] <= 64 < found[False]
    fp32 = LowerRequest(tiny_onnx, "fp32", cfg, {}, None, None)
    assert target.build_settings(fp32) == {}
    with pytest.raises(ValueError, match="reduce_range is for int8"):
        target.parse_options({"reduce_range": True}, "fp32")


def test_onnxruntime_uint8_weights_are_8_bit_and_match_the_simulator(
    monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path, tiny_onnx: Path, inputs, tmp_path: Path
) -> None:
    """Where the CPU would saturate INT8 weights, ONNX Runtime gets UINT8 ones by default: 8-bit
    (not reduce_range's 7), zero point 128, and the artifact computes what the simulator says."""
    import onnx
    from onnx import numpy_helper

    import edgevit.agent
    from edgevit.check.layerwise import sqnr_db
    from edgevit.models.load import logits_of
    from edgevit.quant.simulate import Scope, simulation

    target = TARGETS.get("onnxruntime")
    if not target.availability().available:
        pytest.skip("onnxruntime is not installed")
    monkeypatch.setattr(edgevit.agent, "cpu_flags", lambda: AVX2)
    loaded = load(checkpoint=tiny_checkpoint)
    stage = QuantizeStage(stage="quantize", calibration_batch=8)
    request = LowerRequest(tiny_onnx, "int8", loaded.config, {}, stage, inputs)
    assert target.build_settings(request)["int8_weight_type"] == "uint8"
    assert target.build_settings(request)["int8_weight_bits"] == 8
    scheme = target.int8_scheme(request)
    assert scheme is not None and scheme.weight_unsigned and not scheme.saturates and scheme.weight_bits == 8
    artifact = target.lower(request, tmp_path)
    graph = onnx.load(str(artifact)).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert weights and max(int(w.max()) for w in weights if w.ndim == 2) == 255  # full 8-bit range
    assert not [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    with target.runner(artifact, 1, loaded.config.input_size, None) as runner:
        built = runner.infer(inputs)
    simulated = logits_of(simulation(loaded.model, scheme, inputs, Scope.of(stage)).model, inputs, 16)
    reference = logits_of(loaded.model, inputs, 16)
    assert sqnr_db(built, simulated) > sqnr_db(reference, built) + 10  # the simulator is the artifact


def _saturating_matmul(path: Path, k: int = 64) -> Path:
    """x (uint8 via Q/DQ) @ INT8 weights, all at full range: 255·127 pairs overflow int16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "sw"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        "saturating",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array(1.0, np.float32), "sx"),
            numpy_helper.from_array(np.array(0, np.uint8), "zx"),
            numpy_helper.from_array(np.full((k, 4), 127, np.int8), "w"),
            numpy_helper.from_array(np.array(1.0, np.float32), "sw"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_fake_quant_session_is_exact_where_fused_kernels_saturate(tmp_path: Path) -> None:
    """TensorRT's host check (fake quantization) computes the INT8 product exactly; ONNX Runtime's
    fused kernel saturates on an x86 CPU without VNNI (32767 per pair of products)."""
    pytest.importorskip("onnxruntime")
    from edgevit.agent import OrtSession, cpu_flags
    from edgevit.targets.tensorrt import TrtHostCheckRunner

    assert TrtHostCheckRunner.fake_quant and not TARGETS.get("onnxruntime").runner_class.fake_quant
    model, k = _saturating_matmul(tmp_path / "m.onnx"), 64
    x = np.full((1, k), 255, np.float32)
    exact = 255 * 127 * k
    assert np.all(OrtSession(model, 1, fake_quant=True)(x) == exact)
    fused = OrtSession(model, 1)(x)
    if cpu.saturates(cpu_flags()):
        assert np.all(fused == 32767 * k // 2)  # what 8-bit weights cost on this host
    else:
        assert np.all(fused == exact)
