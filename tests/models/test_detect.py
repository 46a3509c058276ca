"""Detectors on ViT-Plus: the output layout, the locations, checkpoints, ONNX that matches torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.errors import ModelLoadError
from edgevit.models.detect import PRIOR, level_sizes, locations
from edgevit.models.load import create_configured, load, save

TINY = {"depth": 2, "task": "detection", "det_head": "dense"}


def _model(classes: int = 5, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = create_configured("vit_plus_tiny_patch4_32", classes, None, {}, {**TINY, **extra})
    return model.eval()


def test_locations_are_cell_centres_level_by_level() -> None:
    assert level_sizes((8, 8), 3) == [(8, 8), (4, 4), (2, 2)] and level_sizes((7, 5), 2) == [(7, 5), (4, 3)]
    points = locations((8, 8), 4, 3)
    assert points.shape == (64 + 16 + 4, 3)
    assert (
        points[0].tolist() == [2, 2, 4]
        and points[1].tolist() == [6, 2, 4]
        and points[8].tolist() == [2, 6, 4]
    )
    assert points[64].tolist() == [4, 4, 8] and points[-1].tolist() == [24, 24, 16]


def test_output_is_boxes_around_their_locations_then_logits() -> None:
    model = _model()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 84, 4 + 5)
    points = locations((8, 8), 4, 3)
    boxes = out[0, :, :4]
    # every box holds its location (the four distances are softplus: positive)
    assert (boxes[:, 0] < points[:, 0]).all() and (boxes[:, 2] > points[:, 0]).all()
    assert (boxes[:, 1] < points[:, 1]).all() and (boxes[:, 3] > points[:, 1]).all()
    # untrained, every class starts near the focal-loss prior
    assert torch.sigmoid(out[..., 4:]).mean().item() == pytest.approx(PRIOR, abs=0.01)
    assert _model(det_levels=1)(torch.randn(1, 3, 32, 32)).shape == (1, 64, 9)


def test_bad_detector_settings_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="unknown det_head 'dpt': use one of dense"):
        _model(det_head="dpt")
    with pytest.raises(ModelLoadError, match="det_levels must be at least 1"):
        _model(det_levels=0)


def test_a_detector_checkpoint_loads_as_what_it_was(tmp_path: Path) -> None:
    model, config = create_configured("vit_plus_tiny_patch4_32", 2, ["car", "dog"], {}, TINY)
    save(model.eval(), config, tmp_path)
    loaded = load(checkpoint=tmp_path)
    assert loaded.config.task == "detection" and loaded.config.class_names == ["car", "dog"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_detector_export_uses_standard_ops_and_matches_torch(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from edgevit.stages.export import export_onnx

    model = _model()
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and "Softplus" in ops and not ops & {"NonMaxSuppression", "TopK", "Loop", "If"}
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-4)
