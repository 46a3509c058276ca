"""Quantization-aware distillation: it lowers the simulated INT8 error, its output quantizes onto the
grid it trained against, and an interrupted run resumes to the same weights."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgevit.agent import cpu_flags
from edgevit.data import DataSpec, load_data
from edgevit.data.transforms import preprocess
from edgevit.models.load import load
from edgevit.quant.scheme import onnxruntime_scheme
from edgevit.recipe.schema import QatStage
from edgevit.stages import qat as qat_module
from edgevit.stages.qat import QatConfig, freeze_epoch, qat
from edgevit.targets.cpu import saturates


def _config(
    tiny_checkpoint: Path, tmp_path: Path, int16_pairs: bool = False, **settings: object
) -> QatConfig:
    """8-bit weights, summed in int32 (a VNNI CPU's or a GPU's arithmetic) unless ``int16_pairs``:
    a CPU without VNNI saturates them there, which the straight-through training cannot learn
    away (the gradient of a saturated pair is 0; such a CPU gets 7-bit weights by default)."""
    loaded = load(checkpoint=tiny_checkpoint)
    calibration = preprocess(
        load_data(DataSpec(source="digits", split="train", count=32), loaded.config.class_names),
        loaded.config,
    )
    np.save(tmp_path / "calibration.npy", calibration)
    return QatConfig(
        model=str(tiny_checkpoint),
        scheme=asdict(onnxruntime_scheme(seven_bit=False, int16_pairs=int16_pairs)),
        patch_embed=True,
        matmuls=True,  # the widest scope: every layer the simulator models
        calibration=str(tmp_path / "calibration.npy"),
        data=DataSpec(source="digits", split="train", count=96),
        settings=QatStage(
            stage="qat", **{"epochs": 2, "batch_size": 32, "lr": 1e-5, "warmup_epochs": 1, **settings}
        ),
    )


@pytest.fixture(scope="module")
def toy_with_outliers(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with activation outliers (function unchanged): post-training INT8 is poor."""
    from edgevit.models.load import save
    from edgevit.quant.outliers import add_outliers

    loaded = load(checkpoint=tiny_checkpoint)
    add_outliers(loaded.model, channels=2, seed=0)
    out = tmp_path_factory.mktemp("outliers")
    save(loaded.model, loaded.config, out)
    return out


def test_a_qat_run_lowers_the_simulated_int8_error(toy_with_outliers: Path, tmp_path: Path) -> None:
    result = qat(_config(toy_with_outliers, tmp_path, epochs=3), tmp_path / "out", progress=False)
    sim = result["simulated_sqnr_db"]
    assert sim["after"] > sim["before"] + 1.0, sim  # the backend's grid, calibrated afresh
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "ranges.json").is_file()
    assert result["ranges_frozen_from_epoch"] == 3 and result["images_per_second"] > 0
    assert result["ranges"]["per_layer"] and result["ranges"]["max_relative_difference"] >= 0


def test_the_output_checkpoint_quantizes_onto_the_trained_grid(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The ONNX Runtime artifact built from the output holds exactly the weights the run trained
    against: each Linear's INT8 weights, dequantized, equal the scheme's grid of the float output."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from edgevit.recipe.schema import QuantizeStage
    from edgevit.targets import TARGETS, LowerRequest

    # this host's 8-bit grid, as its ONNX Runtime target builds it
    cfg = _config(tiny_checkpoint, tmp_path, saturates(cpu_flags()), epochs=1)
    qat(cfg, tmp_path / "out", progress=False)
    trained = load(checkpoint=tmp_path / "out")
    stage = QuantizeStage(stage="quantize", matmul_scope="all", patch_embed=True, equalize="off")
    request = LowerRequest(
        tmp_path / "out" / "model.onnx",
        "int8",
        trained.config,
        {"reduce_range": False, "unsigned_weights": False},  # INT8 weights, as the run trained against
        stage,
        np.load(cfg.calibration),
        checkpoint=tmp_path / "out",
    )
    scheme = TARGETS.get("onnxruntime").int8_scheme(request)
    assert scheme is not None and asdict(scheme) == cfg.scheme  # the grid the run trained against
    (tmp_path / "ort").mkdir()
    artifact = TARGETS.get("onnxruntime").lower(request, tmp_path / "ort")
    graph = onnx.load(artifact).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight = trained.model.blocks[0].mlp.fc1.weight.detach()
    expected = scheme.quantize_weight(weight).numpy()
    found = False
    for node in graph.node:  # the DequantizeLinear of the int8 weight of fc1 (stored transposed)
        if (
            node.op_type == "DequantizeLinear"
            and node.input[0] in inits
            and inits[node.input[0]].dtype == np.int8
        ):
            q, s = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
            if q.shape == expected.T.shape:
                np.testing.assert_allclose(q * s, expected.T, rtol=1e-5, atol=1e-6)
                found = True
    assert found


def test_an_interrupted_run_resumes_to_the_same_weights(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tiny_checkpoint, tmp_path, epochs=3)
    assert freeze_epoch(cfg.settings) == 2  # the last epoch trains on frozen ranges
    qat(cfg, tmp_path / "whole", progress=False)

    calls = {"n": 0}
    real = qat_module.kd_loss

    def dies_in_the_last_epoch(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 8:  # 3 steps per epoch: the second step of epoch 3, ranges frozen
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(qat_module, "kd_loss", dies_in_the_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        qat(cfg, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "train_state.pt").is_file()
    monkeypatch.setattr(qat_module, "kd_loss", real)
    qat(cfg, tmp_path / "resumed", progress=False)
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
