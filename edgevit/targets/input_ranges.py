"""``options.input_ranges: mse``: shrink each weighted layer's calibrated input range in a built
INT8 artifact by the factor of least squared error on the calibration images.

- QDQ ONNX (onnxruntime, tensorrt): the search runs the float graph the quantizer read (its tensor
  names are the quantized graph's), with each quantized input tensor of a Linear or Conv as an
  extra output, and scales the DequantizeLinear/QuantizeLinear scale.
- OpenVINO: the search runs a copy of NNCF's quantized model with every FakeQuantize bypassed (the
  float model with NNCF's SmoothQuant scales in it), with each activation FakeQuantize's input as
  an extra output, and scales that FakeQuantize's range.
- Core ML (``mode: w8a8``): the search runs the float ML Program on the MIL reference evaluator
  (``edgevit.targets.coreml_mil``) and shrinks coremltools' activation statistics of each weighted
  linear/conv input before its quantization passes read them.

All score every factor with ``edgevit.quant.ranges.RangeSearch`` on the grid the artifact's own
range defines, batch by batch; the INT8 simulator searches its ranges with the same class.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgevit.quant.ranges import RangeSearch
from edgevit.quant.scheme import Int8Scheme
from edgevit.targets.base import INPUT_NAME

if TYPE_CHECKING:
    from edgevit.targets.coreml_mil import MilReference


class InputRangeOptions(BaseModel):
    """``targets[].options.input_ranges`` of the backends that take it (onnxruntime, tensorrt,
    openvino, coreml ``w8a8``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_ranges: Literal["minmax", "mse"] = Field(
        default="minmax",
        description="int8: how each Linear (and Conv) input's per-tensor range is set from the calibration "
        "images: minmax, their global min and max; mse, that range shrunk by the factor (1 to 0.2) that "
        "leaves the least squared error (edgevit.quant.ranges; the INT8 simulator models it). Measured on "
        "DINOv2 ViT-S/14, rotated: ONNX Runtime 29.7 -> 31.4 dB of feature SQNR, OpenVINO 30.5 -> 31.3, "
        "TensorRT 29.9 -> 31.5 (simulated; README); Core ML w8a8 with float linear outputs 31.4 (simulated)",
    )


@dataclass(frozen=True)
class InputGrid:
    """A weighted layer's quantized input in a QDQ graph: the float tensor, the scale initializers
    of its DequantizeLinear and QuantizeLinear (one, as ONNX Runtime writes them, or two), and the
    calibrated range the scale and zero point stand for."""

    tensor: str
    scale: str
    quantize_scale: str
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
            q.input[0],
            InputGrid(q.input[0], dq.input[1], q.input[1], (low - z) * scale, (high - z) * scale),
        )
    return list(grids.values())


def _is(node: Any, op_type: str) -> TypeGuard[Any]:
    return node is not None and node.op_type == op_type


def search_qdq_ranges(
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
    factors = {
        name: best[grid.tensor]
        for grid in grids
        if best[grid.tensor] != 1.0
        for name in {grid.scale, grid.quantize_scale}
    }
    for init in quantized.graph.initializer:
        if init.name in factors:
            scaled = numpy_helper.to_array(init) * np.float32(factors[init.name])
            init.CopyFrom(numpy_helper.from_array(scaled, init.name))
    onnx.save(quantized, str(quantized_path))
    return factors


def search_openvino_ranges(model: Any, batches: Iterable[np.ndarray], scheme: Int8Scheme) -> dict[str, float]:
    """Scale the range of each FakeQuantize on a weighted MatMul/Convolution input of NNCF's
    quantized ``model`` (in place) by its factor of least error over ``batches``; returns the
    factor per FakeQuantize that changed."""
    import openvino as ov
    import torch

    targets = openvino_input_quantizers(model)
    if not targets:
        return {}
    grids = {name: fq_range(fq) for name, fq in targets.items()}
    probe = model.clone()
    outputs = []
    for op in probe.get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input_value(0)
        if op.get_friendly_name() in targets:
            outputs.append((op.get_friendly_name(), source))
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(source)
    first = len(probe.outputs)
    probe.add_outputs([source for _, source in outputs])
    compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    search = RangeSearch(scheme)
    for batch in batches:
        values = compiled(batch).to_tuple()[first:]
        for (name, _), value in zip(outputs, values, strict=True):
            search.add(name, torch.from_numpy(np.asarray(value)), *grids[name])
    best = search.best()
    changed = {name: f for name, f in best.items() if f != 1.0}
    for name, factor in changed.items():
        _scale_fq(targets[name], factor)
    return changed


def openvino_input_quantizers(model: Any) -> dict[str, Any]:
    """{name: FakeQuantize} of the activation quantizers on the data input of each MatMul or
    Convolution whose weight is quantized, in graph order. The weight is a FakeQuantize of a
    constant in NNCF's model, a decompression (Convert, Subtract, Multiply) of one in a saved IR."""

    def quantizer(node: Any) -> bool:
        return bool(node.get_type_name() == "FakeQuantize")

    def weight(node: Any) -> bool:
        while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if quantizer(node):
            node = node.input_value(0).get_node()
        return bool(node.get_type_name() == "Constant")

    found: dict[str, Any] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        fq = op.input_value(0).get_node()
        if quantizer(fq) and not weight(fq) and weight(op.input_value(1).get_node()):
            found.setdefault(fq.get_friendly_name(), fq)
    return found


def fq_range(fq: Any) -> tuple[float, float]:
    """The per-tensor input range [low, high] of an activation FakeQuantize."""
    low, high = (fq.input_value(i).get_node().get_data() for i in (1, 2))
    return float(np.min(low)), float(np.max(high))


def _scale_fq(fq: Any, factor: float) -> None:
    """Multiply a FakeQuantize's input and output ranges by ``factor``."""
    from openvino import opset13 as ops

    for i in (1, 2, 3, 4):
        const = fq.input_value(i).get_node()
        scaled = (const.get_data() * np.float32(factor)).astype(const.get_data().dtype)
        fq.input(i).replace_source_output(ops.constant(scaled).output(0))


def search_coreml_ranges(
    reference: MilReference,
    samples: Iterable[np.ndarray],
    stats: dict[str, dict[str, float]],
    op_types: Sequence[str],
    scheme: Int8Scheme,
    skip: Collection[str] = (),
) -> dict[str, float]:
    """Shrink ``stats`` (coremltools' activation statistics, ``{var: {"rmin", "rmax"}}``, in place)
    of the input of each ``op_types`` op with a constant weight in the float ML Program that
    ``reference`` runs (but the ops named in ``skip``, kept float) by its factor of least error over
    ``samples`` (1 x C x H x W each); returns the factor per input that changed."""
    import torch

    inputs = {
        op.inputs["x"].name
        for op in reference.ops
        if op.op_type in op_types and op.name not in skip and constant_weight(op)
    } & stats.keys()
    if not inputs:
        return {}
    search = RangeSearch(scheme)

    def observe(name: str, value: np.ndarray) -> None:
        if name in inputs:
            grid = stats[name]
            search.add(
                name, torch.from_numpy(np.asarray(value, dtype=np.float32)), grid["rmin"], grid["rmax"]
            )

    for sample in samples:
        reference.run({INPUT_NAME: sample}, observe)
    changed = {name: f for name, f in search.best().items() if f != 1.0}
    for name, factor in changed.items():
        stats[name] = {key: value * factor for key, value in stats[name].items()}
    return changed


def constant_weight(op: Any) -> bool:
    """Whether a MIL linear/conv op's weight is a constant (or a compressed one)."""
    weight = op.inputs.get("weight")
    return (
        weight is not None
        and weight.op is not None
        and (weight.op.op_type == "const" or weight.op.op_type.startswith("constexpr_"))
    )
