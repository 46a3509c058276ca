"""Core ML W8A8 built without Core ML: coremltools' activation quantization passes, fed with
statistics from edgevit's MIL reference evaluator.

coremltools calibrates activations through ``MLModel.predict``, which exists only on macOS. Here
the float ML Program runs on :class:`edgevit.targets.coreml_mil.MilReference` instead
(:func:`activation_ranges`), and :func:`calibrated_with` hands those statistics to coremltools'
passes, which then run unchanged. :func:`quantize_activations` is what the coreml target's
``mode: w8a8`` does: INT8 inputs for the chosen op types, ranges shrunk by their least-error factor
with ``options.input_ranges: mse`` (``edgevit.targets.input_ranges``), and no pair after each
``linear`` with ``quantize.linear_outputs: float`` (:func:`linear_outputs`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.quant.scheme import Int8Scheme
from edgevit.targets.base import INPUT_NAME, LowerRequest
from edgevit.targets.calibration import calibration_batches
from edgevit.targets.coreml_mil import MilReference
from edgevit.targets.input_ranges import search_coreml_ranges

Stats = dict[str, dict[str, float]]


def activation_ranges(reference: MilReference, samples: Iterator[np.ndarray]) -> Stats:
    """Global min/max of every non-constant value of ``reference``'s program over ``samples``
    (1 x C x H x W each), in the form coremltools' activation quantization passes take."""
    stats: Stats = {}

    def observe(name: str, value: np.ndarray) -> None:
        if value.dtype.kind != "f" or value.size == 0:
            return
        lo, hi = float(np.min(value)), float(np.max(value))
        old = stats.get(name)
        stats[name] = (
            {"rmin": lo, "rmax": hi}
            if old is None
            else {"rmin": min(lo, old["rmin"]), "rmax": max(hi, old["rmax"])}
        )

    for sample in samples:
        reference.run({INPUT_NAME: sample}, observe)
    return stats


@contextlib.contextmanager
def calibrated_with(stats: Stats) -> Iterator[None]:
    """Make coremltools' linear_quantize_activations use ``stats`` instead of calibrating through
    Core ML ``predict`` (macOS only). Its graph passes then run unchanged."""
    from coremltools.optimize.coreml import _post_training_quantization as ptq

    original = ptq._get_activation_calibration_stats
    ptq._get_activation_calibration_stats = lambda *args, **kwargs: stats
    try:
        yield
    finally:
        ptq._get_activation_calibration_stats = original


@contextlib.contextmanager
def linear_outputs(quantized: bool) -> Iterator[None]:
    """Without ``quantized``, coremltools' pass that puts a quantize/dequantize pair after each
    activation-quantized op leaves the linear ops out (their input and weight stay INT8; conv, add
    and pooling keep theirs): what ``quantize.linear_outputs: float`` asks for."""
    if quantized:
        yield
        return
    from coremltools.converters.mil.mil.passes.defs.optimize_activation_quantization import (
        insert_suffix_quantize_dequantize_pair as suffix,
    )

    original = suffix._try_match_and_transform_pattern

    def skip_linear(self: Any, dequantize_op: Any, *args: Any) -> bool:
        children = dequantize_op.outputs[0].child_ops
        if children and children[0].op_type == "linear":
            return False
        return bool(original(self, dequantize_op, *args))

    suffix._try_match_and_transform_pattern = skip_linear  # type: ignore[method-assign]
    try:
        yield
    finally:
        suffix._try_match_and_transform_pattern = original  # type: ignore[method-assign]


def quantize_activations(
    model: Any,
    request: LowerRequest,
    scheme: Int8Scheme,
    ops: list[str],
    workdir: Path,
    kept: dict[str, None],
) -> Any:
    """``model`` (an MLModel) with INT8 activations at the inputs of ``ops`` (and at a linear's
    output unless ``scheme`` keeps it float), on ranges calibrated on the MIL reference over the
    request's calibration images; the ops named in ``kept`` stay float."""
    import coremltools.optimize.coreml as cto

    def samples() -> Iterator[np.ndarray]:
        return (batch[i : i + 1] for batch in calibration_batches(request) for i in range(len(batch)))

    float_package = workdir / "float.mlpackage"
    model.save(str(float_package))
    try:
        reference = MilReference(float_package)
        stats = activation_ranges(reference, samples())
        if scheme.input_ranges == "mse":
            search_coreml_ranges(reference, samples(), stats, ops, scheme, skip=kept)
    finally:
        shutil.rmtree(float_package, ignore_errors=True)
    act = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_tensor")
    # Only the chosen ops: coremltools would also quantize Add, pooling and the patch Conv.
    configs: dict[str, Any] = {"add": None, "avg_pool": None, "max_pool": None, "conv": None, "linear": None}
    configs.update(dict.fromkeys(ops, act))
    assert request.calibration is not None
    with calibrated_with(stats), linear_outputs(scheme.quantize_outputs):
        return cto.linear_quantize_activations(
            model,
            cto.OptimizationConfig(op_type_configs=configs, op_name_configs=kept),
            [{INPUT_NAME: request.calibration[:1]}],
        )
