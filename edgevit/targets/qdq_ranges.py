"""``options.input_ranges: mse`` for the QDQ ONNX targets: shrink each weighted layer's calibrated
input scale by the factor of least squared error on the calibration images.

The search runs the float graph the quantizer read (its tensor names are the quantized graph's),
takes each quantized input tensor of a Linear or Conv as an extra output, and scores every factor
with ``edgevit.quant.ranges.RangeSearch`` on the grid the artifact's own scale and zero point
define, batch by batch. The INT8 simulator searches its ranges with the same class.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from edgevit.quant.ranges import RangeSearch
from edgevit.quant.scheme import Int8Scheme
from edgevit.targets.base import INPUT_NAME


@dataclass(frozen=True)
class InputGrid:
    """A weighted layer's quantized input in a QDQ graph: the float tensor, its scale initializer,
    and the calibrated range its scale and zero point stand for."""

    tensor: str
    scale: str
    lo: float
    hi: float


def input_grids(quantized: Any) -> list[InputGrid]:
    """The quantized input of each MatMul/Gemm/Conv whose weight is quantized (a DequantizeLinear of
    an initializer), one per tensor, in graph order."""
    from onnx import numpy_helper

    producer = {o: n for n in quantized.graph.node for o in n.output}
    inits = {i.name: i for i in quantized.graph.initializer}
    grids: dict[str, InputGrid] = {}
    for node in quantized.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        dq, weight_dq = producer.get(node.input[0]), producer.get(node.input[1])
        if not (_is(dq, "DequantizeLinear") and _is(weight_dq, "DequantizeLinear")):
            continue
        q = producer.get(dq.input[0])
        if not _is(q, "QuantizeLinear") or weight_dq.input[0] not in inits:
            continue
        if len(dq.input) < 3 or dq.input[1] not in inits or dq.input[2] not in inits:
            continue
        scale = float(numpy_helper.to_array(inits[dq.input[1]]).reshape(-1)[0])
        zero = numpy_helper.to_array(inits[dq.input[2]])
        z = int(zero.reshape(-1)[0])
        low, high = (0, 255) if zero.dtype == np.uint8 else (-127, 127)
        grids.setdefault(
            q.input[0], InputGrid(q.input[0], dq.input[1], (low - z) * scale, (high - z) * scale)
        )
    return list(grids.values())


def _is(node: Any, op_type: str) -> TypeGuard[Any]:
    return node is not None and node.op_type == op_type


def search_input_ranges(
    quantized_path: Path, float_path: Path, batches: Iterable[np.ndarray], scheme: Int8Scheme
) -> dict[str, float]:
    """Scale each weighted layer's input range of the QDQ ONNX at ``quantized_path`` (in place) by
    its factor of least error, run on ``float_path`` (the graph it was quantized from) over
    ``batches``; returns the factor per scale initializer that changed."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    quantized = onnx.load(str(quantized_path))
    grids = input_grids(quantized)
    if not grids:
        return {}
    probe = onnx.load(str(float_path))
    have = {o.name for o in probe.graph.output}
    for grid in grids:
        if grid.tensor not in have:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(grid.tensor, onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    del probe
    search = RangeSearch(scheme)
    names = [g.tensor for g in grids]
    for batch in batches:
        for grid, value in zip(grids, session.run(names, {INPUT_NAME: batch}), strict=True):
            search.add(grid.tensor, torch.from_numpy(np.asarray(value)), grid.lo, grid.hi)
    best = search.best()
    factors = {grid.scale: best[grid.tensor] for grid in grids if best[grid.tensor] != 1.0}
    for init in quantized.graph.initializer:
        if init.name in factors:
            scaled = numpy_helper.to_array(init) * np.float32(factors[init.name])
            init.CopyFrom(numpy_helper.from_array(scaled, init.name))
    onnx.save(quantized, str(quantized_path))
    return factors
