"""``options.input_ranges: mse`` on the QDQ targets, OpenVINO and Core ML W8A8: the artifact's
input ranges shrink by the factors the INT8 simulator chose for the same layers on the same
images."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgevit.models.load import load, save
from edgevit.quant.outliers import add_outliers
from edgevit.quant.ranges import RANGE_FACTORS
from edgevit.quant.simulate import Scope, simulation
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets import TARGETS, LowerRequest
from edgevit.targets.input_ranges import fq_range, input_grids, openvino_input_quantizers

pytest.importorskip("onnxruntime")


def _input_scales(backend: str, artifact: Path) -> list[float]:
    """The high end of each weighted layer's input range in a built artifact, in graph order."""
    if backend == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(artifact))
        return [fq_range(fq)[1] for fq in openvino_input_quantizers(model).values()]
    if backend == "coreml":
        from edgevit.targets.coreml_mil import load_program
        from edgevit.targets.input_ranges import constant_weight

        program, _ = load_program(artifact)
        linear = [
            op
            for op in program.functions["main"].operations
            if op.op_type == "linear" and constant_weight(op)
        ]
        return [float(np.max(op.inputs["x"].op.inputs["scale"].val)) * 127 for op in linear]
    graph = onnx.load(str(artifact))
    inits = {i.name: float(numpy_helper.to_array(i).reshape(-1)[0]) for i in graph.graph.initializer}
    grids = input_grids(graph)
    assert all(inits[g.quantize_scale] == inits[g.scale] for g in grids)  # Q and DQ on one grid
    return [inits[g.scale] for g in grids]


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "openvino", "coreml"])
def test_artifact_scales_follow_the_simulators_factors(
    backend: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    target = TARGETS.get(backend)
    if not target.availability().available:
        pytest.skip(target.availability().reason)
    loaded = load(checkpoint=tiny_checkpoint)
    model = copy.deepcopy(loaded.model).eval()
    add_outliers(model, channels=2, seed=0)  # a few large channels: ranges worth shrinking
    onnx_path = export_onnx(model, loaded.config.input_size, tmp_path / "model.onnx")
    checkpoint = tmp_path / "checkpoint"  # Core ML converts from the torch model
    checkpoint.mkdir()
    save(model, loaded.config, checkpoint)
    calibration = np.random.default_rng(1).uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32)
    stage = QuantizeStage(stage="quantize", calibration_batch=8, equalize="off", rotate="off")
    options: dict[str, object] = {"mode": "w8a8"} if backend == "coreml" else {}
    scales, factors = {}, {}
    for ranges in ("minmax", "mse"):
        request = LowerRequest(
            onnx_path,
            "int8",
            loaded.config,
            {**options, "input_ranges": ranges},
            stage,
            calibration,
            checkpoint=checkpoint,
        )
        out = tmp_path / ranges
        out.mkdir()
        scales[ranges] = _input_scales(backend, target.lower(request, out))
        scheme = target.int8_scheme(request)
        assert scheme is not None and scheme.input_ranges == ranges
        sim = simulation(model, scheme, calibration, Scope.of(stage))
        factors[ranges] = [sim.inputs[n][0][1] for n in sim.layers]  # each layer's calibrated high end
    simulated = [mse / plain for mse, plain in zip(factors["mse"], factors["minmax"], strict=True)]
    built = [mse / plain for mse, plain in zip(scales["mse"], scales["minmax"], strict=True)]
    assert len(built) == len(simulated) == 5  # qkv, proj, fc1, fc2 and the head
    assert any(f < 0.99 for f in built), built  # the outlier channels' layers were clipped
    # Core ML's grids are stored in float16, and its FP16 program computes what is searched
    rel = 2e-3 if backend == "coreml" else 1e-5
    for b, s in zip(built, simulated, strict=True):
        assert min(RANGE_FACTORS, key=lambda f: abs(f - b)) == pytest.approx(b, rel=rel)
        assert b == pytest.approx(s, rel=rel)
