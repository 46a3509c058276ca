"""The MIL reference evaluator: programs saved by coremltools, run op by op on NumPy."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("coremltools")

from edgevit.errors import NotCheckable
from edgevit.targets.coreml_mil import MilReference, quiet

with quiet():
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb


def save_program(prog, path: Path) -> Path:
    with quiet():
        model = ct.convert(
            prog,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS17,
        )
        model.save(str(path))
    return path


def test_conv_and_pooling_padding_modes_match_torch(tmp_path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    wg = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 9, 9))], opset_version=ct.target.iOS17)
    def prog(x):
        same = mb.conv(x=x, weight=w, bias=b, strides=[2, 2], pad_type="same", name="same")
        lower = mb.conv(x=x, weight=w, strides=[2, 2], pad_type="same_lower", name="lower")
        pooled = mb.avg_pool(
            x=same, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True, name="pool"
        )
        grouped = mb.conv(
            x=x,
            weight=wg,
            strides=[1, 1],
            pad_type="custom",
            pad=[2, 2, 1, 1],
            dilations=[2, 2],
            groups=3,
            name="grouped",
        )
        counted = [
            mb.avg_pool(
                x=x,
                kernel_sizes=[3, 3],
                strides=[2, 2],
                pad_type="custom",
                pad=[1, 1, 1, 1],
                exclude_padding_from_average=exclude,
                ceil_mode=True,
                name=f"exclude_{exclude}",
            )
            for exclude in (True, False)
        ]
        return same, lower, pooled, grouped, *counted

    ref = MilReference(save_program(prog, tmp_path / "conv.mlpackage"))
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    seen: dict[str, np.ndarray] = {}
    ref.run({"x": x}, lambda name, value: seen.__setitem__(name, value))
    t = torch.from_numpy(x)
    # 'same' with stride 2 on 9 pixels: 5 outputs, total padding 2 -> (1, 1); the same for same_lower.
    same = F.conv2d(F.pad(t, (1, 1, 1, 1)), torch.from_numpy(w), torch.from_numpy(b), stride=2).numpy()
    np.testing.assert_allclose(seen["same"], same, rtol=1e-5, atol=1e-5)
    assert seen["lower"].shape == (1, 4, 5, 5)
    pooled = F.avg_pool2d(torch.from_numpy(same), 2, 2, ceil_mode=True).numpy()
    assert pooled.shape == (1, 4, 3, 3)
    np.testing.assert_allclose(seen["pool"], pooled, rtol=1e-5, atol=1e-6)
    grouped = F.conv2d(F.pad(t, (1, 1, 2, 2)), torch.from_numpy(wg), dilation=2, groups=3).numpy()
    np.testing.assert_allclose(seen["grouped"], grouped, rtol=1e-5, atol=1e-5)
    for exclude in (True, False):
        expect = F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=not exclude).numpy()
        np.testing.assert_allclose(seen[f"exclude_{exclude}"], expect, rtol=1e-5, atol=1e-6)


def test_an_op_without_an_evaluator_is_named(tmp_path) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 4))])
    def prog(x):
        return mb.max_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid")

    with pytest.raises(NotCheckable, match=r"no reference evaluator for MIL op\(s\) max_pool"):
        MilReference(save_program(prog, tmp_path / "maxpool.mlpackage"))


def test_values_of_one_sample_do_not_leak_into_the_next(tmp_path) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3))])
    def prog(x):
        return mb.mul(x=mb.add(x=x, y=1.0), y=2.0, name="y")

    ref = MilReference(save_program(prog, tmp_path / "affine.mlpackage"))
    out = [next(iter(ref.run({"x": np.full((1, 3), v, np.float32)}).values())) for v in (0.0, 5.0)]
    np.testing.assert_array_equal(out[0], np.full((1, 3), 2.0))
    np.testing.assert_array_equal(out[1], np.full((1, 3), 12.0))
