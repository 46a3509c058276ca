"""Layer-wise comparison: where in the network a quantized artifact departs from the float model.

The float ONNX the targets were lowered from and the quantized artifact (an ONNX Runtime or
TensorRT QDQ ONNX, or an OpenVINO IR) run on the same images with the input and output of every
MatMul/Gemm/Conv exposed. For each layer it reports the SQNR (dB) and cosine of its output against
the float model's, and the SQNR of its input: errors made earlier included. Errors propagate, so
every layer after a bad one has a poor output SQNR too. To name the layer that *makes* the error,
each quantized layer (its input goes through Q/DQ or FakeQuantize) is also run alone, as the
artifact has it (its quantizers and its quantized weights), on the float model's input to that
layer: ``local_sqnr_db`` is that output against the float output. Quantized layers rank first,
lowest local SQNR first; float layers follow (they carry noise, they do not add quantization error).

Tensors are matched by name: ONNX Runtime's quantizer keeps the float graph's tensor names (its
Q/DQ tensors get suffixes), and OpenVINO keeps ONNX tensor names through conversion and NNCF.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.errors import EdgeVitError

LAYER_OPS = ("MatMul", "Gemm", "Conv")
_CAP_DB = 150.0  # float32 agrees to about this; "identical" is reported as the cap
_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Input")


@dataclass(frozen=True)
class LayerError:
    """One layer's departure from the float model on the compared images."""

    layer: str  # module path (e.g. blocks.1.mlp.fc1), or module/op for an attention matmul
    order: int  # position in the float graph
    block: str
    op: str
    node: str
    quantized: bool
    sqnr_in: float
    sqnr_out: float
    local_sqnr_db: float
    cosine_out: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class _Layer:
    name: str
    block: str
    op: str
    node: str
    input: str
    output: str
    others: tuple[str, ...] = ()  # further activation inputs: an attention matmul's second operand


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """10·log10(signal / noise) of ``other`` against ``reference``, capped at 150 dB."""
    ref, diff = reference.astype(np.float64), reference.astype(np.float64) - other.astype(np.float64)
    noise, signal = float(np.sum(diff**2)), float(np.sum(ref**2))
    if noise == 0 or signal == 0:
        return _CAP_DB if noise == 0 else -_CAP_DB
    return float(min(_CAP_DB, 10 * np.log10(signal / noise)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


def layers(model: Any) -> list[_Layer]:
    """A loaded float graph's MatMul/Gemm/Conv nodes, named by the torch module they came from."""
    from edgevit.targets.graph import module_name

    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type in LAYER_OPS:
            name, block = module_name(node)
            others = tuple(i for i in node.input[1:] if i and i not in consts)
            found.append(_Layer(name, block, node.op_type, node.name, node.input[0], node.output[0], others))
    return found


def _actual(name: str, produced: set[str]) -> str | None:
    """The name a float-graph tensor has in a QDQ graph: its own, or its Q/DQ-renamed twin."""
    return name if name in produced else next((name + s for s in _SUFFIXES if name + s in produced), None)


def _onnx_tensors(model: Any, wanted: list[str], x: np.ndarray) -> tuple[dict[str, np.ndarray], set[str]]:
    """Run a loaded ONNX with ONNX Runtime on ``x`` with ``wanted`` tensors (those that exist, or
    their Q/DQ-renamed twins) added to its outputs: ({float-graph name: value}, names of the
    tensors that reach their consumers through Q/DQ)."""
    import onnx
    import onnxruntime as ort

    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    quantized = {n for n in wanted if n + "_DequantizeLinear_Output" in produced}
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    inferred = onnx.shape_inference.infer_shapes(model)
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
    alias: dict[str, str] = {}
    for name in wanted:
        actual = _actual(name, produced)
        if actual is not None:
            alias[actual] = name
    existing = {o.name for o in model.graph.output}
    for actual in alias:
        if actual not in existing:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(actual, types.get(actual) or onnx.TensorProto.FLOAT, None)
            )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: x})
    out = {alias[n]: np.asarray(v, np.float32) for n, v in zip(names, values, strict=True) if n in alias}
    return out, quantized


def _onnx_local(
    model: Any, pairs: list[tuple[tuple[str, ...], str]], inputs: dict[str, np.ndarray], fake_quant: bool
) -> dict[str, np.ndarray]:
    """Run each (inputs, output) span of a loaded ONNX alone (onnx.utils.Extractor) on the float
    model's values of its inputs, with ONNX Runtime's integer kernels or (``fake_quant``) its Q/DQ
    as written; {output name: value}."""
    import onnx
    import onnxruntime as ort

    produced = {o for n in model.graph.node for o in n.output}
    extractor = onnx.utils.Extractor(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if fake_quant:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    out = {}
    for srcs, dst in pairs:
        actual = _actual(dst, produced)
        if actual is None:
            continue
        sub = extractor.extract_model(list(srcs), [actual])
        session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        out[dst] = np.asarray(session.run(None, {s: inputs[s] for s in srcs})[0], np.float32)
    return out


def _ov_layer(ops: list[Any], node: str) -> tuple[Any, Any] | None:
    """(compute op, output port) of the layer from ONNX node ``node`` in an OpenVINO model. The
    compute op (MatMul/Convolution) keeps the node's name, or ``node/WithoutBiases`` when a Gemm or
    a Conv with bias became MatMul/Convolution + Add; the output is then the Add's (named after the
    node, or after its output tensor)."""
    compute = next(
        (
            op
            for op in ops
            if op.get_type_name() in ("MatMul", "Convolution")
            and op.get_friendly_name() in (node, f"{node}/WithoutBiases")
        ),
        None,
    )
    if compute is None:
        return None
    consumers = [t.get_node() for t in compute.output(0).get_target_inputs()]
    biased = compute.get_friendly_name().endswith("/WithoutBiases") and len(consumers) == 1
    if biased and consumers[0].get_type_name() == "Add":
        return compute, consumers[0].output(0)
    return compute, compute.output(0)


def _ov_walk(op: Any) -> tuple[Any, Any, bool]:
    """From a layer's compute op back through what NNCF put before it (FakeQuantize, SmoothQuant's
    Multiply): (the float tensor it reads, the input where that chain starts, whether a FakeQuantize
    is on it)."""
    start, source, quantized = op.input(0), op.input_value(0), False
    while True:
        node = source.get_node()
        kind = node.get_type_name()
        if kind != "FakeQuantize" and "nncf" not in node.get_friendly_name():
            return source, start, quantized
        quantized |= kind == "FakeQuantize"
        start, source = node.input(0), node.input_value(0)


def _openvino_tensors(
    path: Path, found: list[_Layer], x: np.ndarray
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Run an OpenVINO IR on ``x`` (CPU, FP32 precision) with each layer's input and output exposed,
    finding layers by their ONNX node name (OpenVINO's friendly name): ({float-graph tensor name:
    value}, names of the layer inputs that go through a FakeQuantize)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    ops = list(model.get_ops())
    ports: dict[str, Any] = {}
    quantized = set()
    for layer in found:
        located = _ov_layer(ops, layer.node)
        if located is None:
            continue
        source, _, q = _ov_walk(located[0])
        ports[layer.input], ports[layer.output] = source, located[1]
        if q:
            quantized.add(layer.input)
    tags: dict[str, str] = {}  # float-graph tensor name -> a tensor name of ours on that port
    unique: dict[tuple[str, int], str] = {}
    for key, port in ports.items():
        ident = (port.get_node().get_friendly_name(), port.get_index())
        if ident not in unique:
            if any(t.get_node().get_type_name() == "Result" for t in port.get_target_inputs()):
                unique[ident] = port.get_any_name()  # already a model output (the logits)
            else:
                unique[ident] = f"edgevit_probe_{len(unique)}"
                port.get_tensor().add_names({unique[ident]})
                model.add_outputs([port])
        tags[key] = unique[ident]
    model.reshape({model.inputs[0].any_name: list(x.shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled.create_infer_request().infer({0: x})
    return {key: np.asarray(result[compiled.output(tag)], np.float32) for key, tag in tags.items()}, quantized


def _openvino_local(path: Path, found: list[_Layer], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run each quantized layer of an OpenVINO IR alone: what NNCF put before it (FakeQuantize,
    SmoothQuant scale) fed from a new parameter holding the float input; {output name: value}."""
    import openvino as ov

    core = ov.Core()
    out = {}
    for layer in found:
        model = core.read_model(str(path))  # a fresh graph per layer: the cut rewires it
        located = _ov_layer(list(model.get_ops()), layer.node)
        if located is None or layer.input not in inputs:
            continue
        _, start, quantized = _ov_walk(located[0])
        if not quantized:
            continue
        param = ov.opset13.parameter(list(inputs[layer.input].shape), ov.Type.f32, name="edgevit_layer_input")
        start.replace_source_output(param.output(0))
        sub = ov.Model([located[1]], [param], "layer")
        compiled = core.compile_model(sub, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out[layer.output] = np.asarray(
            compiled.create_infer_request().infer({0: inputs[layer.input]})[0], np.float32
        )
    return out


def compare(float_onnx: Path, artifact: Path, x: np.ndarray, fake_quant: bool = False) -> list[LayerError]:
    """Per-layer error of ``artifact`` (.onnx or OpenVINO .xml) against ``float_onnx`` on images
    ``x``: quantized layers first, lowest SQNR when run alone first. Layers whose tensors the
    artifact does not expose are left out. ``fake_quant``: an ONNX layer runs alone as its Q/DQ is
    written (the arithmetic of TensorRT), not through ONNX Runtime's x86 integer kernels."""
    import onnx

    float_model = onnx.load(str(float_onnx))
    found = layers(float_model)
    wanted = sorted({t for layer in found for t in (layer.input, layer.output, *layer.others)})
    x = np.ascontiguousarray(x, np.float32)
    reference, _ = _onnx_tensors(float_model, wanted, x)
    if artifact.suffix == ".onnx":
        model = onnx.load(str(artifact))
        other, quantized = _onnx_tensors(model, wanted, x)  # adds the probed tensors to its outputs
        spans = [
            ((la.input, *la.others), la.output)
            for la in found
            if la.input in quantized and all(t in reference for t in (la.input, *la.others))
        ]
        local = _onnx_local(model, spans, reference, fake_quant)
    elif artifact.suffix == ".xml":
        other, quantized = _openvino_tensors(artifact, found, x)
        local = _openvino_local(artifact, [la for la in found if la.input in quantized], reference)
    else:
        raise EdgeVitError(
            f"{artifact.name}: layer-wise comparison reads ONNX (.onnx) and OpenVINO (.xml) artifacts",
            "compare an onnxruntime, tensorrt or openvino target",
        )
    results = []
    for order, layer in enumerate(found):
        if not all(t in reference and t in other for t in (layer.input, layer.output)):
            continue
        ref_out, out = reference[layer.output], other[layer.output]
        if ref_out.shape != out.shape or reference[layer.input].shape != other[layer.input].shape:
            continue
        s_in = sqnr_db(reference[layer.input], other[layer.input])
        s_out = sqnr_db(ref_out, out)
        quant = layer.input in quantized
        s_local = sqnr_db(ref_out, local[layer.output]) if layer.output in local else _CAP_DB
        cos = _cosine(ref_out, out)
        results.append(
            LayerError(layer.name, order, layer.block, layer.op, layer.node, quant, s_in, s_out, s_local, cos)
        )
    if not results:
        raise EdgeVitError(
            f"{artifact.name}: none of the float model's layers could be matched by tensor name",
            "compare an artifact lowered from this build's export/model.onnx",
        )
    return sorted(results, key=lambda r: (not r.quantized, r.local_sqnr_db))


COMPARABLE_SUFFIXES = (".onnx", ".xml")


def summary(float_onnx: Path, artifact: Path, x: np.ndarray, backend: str | None = None) -> dict[str, Any]:
    """The report's ``layerwise`` entry for an artifact of ``backend``: every layer, quantized
    worst first, each run alone the way that backend's host check runs the whole artifact."""
    from edgevit.targets import TARGETS

    runner = TARGETS.get(backend).runner_class if backend else None
    found = compare(float_onnx, artifact, x, fake_quant=bool(getattr(runner, "fake_quant", False)))
    return {"samples": len(x), "layers": [e.to_dict() for e in found]}
