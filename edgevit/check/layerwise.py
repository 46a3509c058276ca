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

from collections.abc import Callable
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
    energy = _Noise()
    energy.add(reference, other)
    return energy.db()


def outputs_sqnr_db(
    reference: Callable[[np.ndarray], np.ndarray],
    other: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    batch: int,
    normalise: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None,
) -> float:
    """:func:`sqnr_db` of ``other``'s outputs against ``reference``'s on ``x``, run ``batch`` images
    at a time: a dense model's outputs are never held for the whole set. ``normalise(out, shape)``
    puts ``other``'s outputs in the reference's layout (a task's: a backend may give NHWC)."""
    energy = _Noise()
    for i in range(0, len(x), batch):
        ref = reference(x[i : i + batch])
        out = np.asarray(other(np.ascontiguousarray(x[i : i + batch])))
        energy.add(ref, out if normalise is None else normalise(out, ref.shape))
    return energy.db()


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


def _ort_options(fake_quant: bool = False, keep_all: bool = False) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if keep_all:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    if fake_quant:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return opts


class _OnnxProbe:
    """A loaded ONNX run by ONNX Runtime with ``wanted`` tensors (those that exist, or their
    Q/DQ-renamed twins) added to its outputs. ``names``: the float-graph names it yields;
    ``quantized``: those that reach their consumers through Q/DQ."""

    def __init__(self, model: Any, wanted: list[str]) -> None:
        import onnx
        import onnxruntime as ort

        produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        self.quantized = {n for n in wanted if n + "_DequantizeLinear_Output" in produced}
        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
        inferred = onnx.shape_inference.infer_shapes(model)
        types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
        self._alias: dict[str, str] = {}
        for name in wanted:
            actual = _actual(name, produced)
            if actual is not None:
                self._alias[actual] = name
        existing = {o.name for o in model.graph.output}
        for actual in self._alias:
            if actual not in existing:
                model.graph.output.append(
                    onnx.helper.make_tensor_value_info(
                        actual, types.get(actual) or onnx.TensorProto.FLOAT, None
                    )
                )
        opts = _ort_options(keep_all=True)
        self._session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs() if o.name in self._alias]
        self.names = {self._alias[n] for n in self._outputs}

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, {self._session.get_inputs()[0].name: x})
        return {self._alias[n]: np.asarray(v, np.float32) for n, v in zip(self._outputs, values, strict=True)}


class _OnnxLocal:
    """Each (inputs, output) span of a loaded ONNX cut out (onnx.utils.Extractor) and run alone on
    the float model's values of its inputs, with ONNX Runtime's integer kernels or (``fake_quant``)
    its Q/DQ as written."""

    def __init__(self, model: Any, spans: list[tuple[tuple[str, ...], str]], fake_quant: bool) -> None:
        import onnx
        import onnxruntime as ort

        produced = {o for n in model.graph.node for o in n.output}
        extractor = onnx.utils.Extractor(model)
        opts = _ort_options(fake_quant=fake_quant)
        self._runs = []
        for srcs, dst in spans:
            actual = _actual(dst, produced)
            if actual is None:
                continue
            sub = extractor.extract_model(list(srcs), [actual])
            session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            self._runs.append((srcs, dst, session))

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            dst: np.asarray(session.run(None, {s: inputs[s] for s in srcs})[0], np.float32)
            for srcs, dst, session in self._runs
        }


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


def _ov_batch_free(shape: tuple[int, ...]) -> Any:
    """An OpenVINO shape with a dynamic batch: the comparison runs the images in chunks."""
    import openvino as ov

    return ov.PartialShape([-1, *shape[1:]])


class _OpenVinoProbe:
    """An OpenVINO IR run on the CPU at FP32 precision with each layer's input and output exposed,
    layers found by their ONNX node name (OpenVINO's friendly name). ``names``: the float-graph
    tensor names it yields; ``quantized``: the layer inputs that go through a FakeQuantize."""

    def __init__(self, path: Path, found: list[_Layer], item_shape: tuple[int, ...]) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        ops = list(model.get_ops())
        ports: dict[str, Any] = {}
        self.quantized = set()
        for layer in found:
            located = _ov_layer(ops, layer.node)
            if located is None:
                continue
            source, _, q = _ov_walk(located[0])
            ports[layer.input], ports[layer.output] = source, located[1]
            if q:
                self.quantized.add(layer.input)
        self._tags: dict[str, str] = {}  # float-graph tensor name -> a tensor name of ours on that port
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
            self._tags[key] = unique[ident]
        model.reshape({model.inputs[0].any_name: _ov_batch_free((1, *item_shape))})
        self._compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._request = self._compiled.create_infer_request()
        self.names = set(self._tags)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self._request.infer({0: x})
        return {
            key: np.array(result[self._compiled.output(tag)], np.float32) for key, tag in self._tags.items()
        }


class _OpenVinoLocal:
    """Each quantized layer of an OpenVINO IR run alone: what NNCF put before it (FakeQuantize,
    SmoothQuant scale) fed from a new parameter holding the float input. Compiled on the first
    call, when the inputs' shapes are known."""

    def __init__(self, path: Path, found: list[_Layer]) -> None:
        self._path, self._found = path, found
        self._runs: list[tuple[str, str, Any]] | None = None

    def _compile(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, str, Any]]:
        import openvino as ov

        core = ov.Core()
        runs = []
        for layer in self._found:
            model = core.read_model(str(self._path))  # a fresh graph per layer: the cut rewires it
            located = _ov_layer(list(model.get_ops()), layer.node)
            if located is None or layer.input not in inputs:
                continue
            _, start, quantized = _ov_walk(located[0])
            if not quantized:
                continue
            shape = _ov_batch_free(inputs[layer.input].shape)
            param = ov.opset13.parameter(shape, ov.Type.f32, name="edgevit_layer_input")
            start.replace_source_output(param.output(0))
            sub = ov.Model([located[1]], [param], "layer")
            compiled = core.compile_model(sub, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            runs.append((layer.input, layer.output, compiled.create_infer_request()))
        return runs

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runs is None:
            self._runs = self._compile(inputs)
        return {
            dst: np.array(request.infer({0: inputs[src]})[0], np.float32) for src, dst, request in self._runs
        }


class _Noise:
    """Signal and noise energy summed over chunks: the SQNR of all images at once."""

    def __init__(self) -> None:
        self.noise = self.signal = 0.0

    def add(self, reference: np.ndarray, other: np.ndarray) -> None:
        ref = reference.astype(np.float64)
        self.noise += float(np.sum((ref - other.astype(np.float64)) ** 2))
        self.signal += float(np.sum(ref**2))

    def db(self) -> float:
        if self.noise == 0 or self.signal == 0:
            return _CAP_DB if self.noise == 0 else -_CAP_DB
        return float(min(_CAP_DB, 10 * np.log10(self.signal / self.noise)))


class _Tally:
    """One layer's errors summed over the chunks compared so far."""

    def __init__(self) -> None:
        self.inp, self.out = _Noise(), _Noise()
        self.local: _Noise | None = None  # only for a layer that was also run alone
        self.cosines, self.count = 0.0, 0

    def add(
        self,
        ref_in: np.ndarray,
        in_: np.ndarray,
        ref_out: np.ndarray,
        out: np.ndarray,
        alone: np.ndarray | None,
    ) -> None:
        self.inp.add(ref_in, in_)
        self.out.add(ref_out, out)
        if alone is not None:
            self.local = self.local or _Noise()
            self.local.add(ref_out, alone)
        self.cosines += _cosine(ref_out, out) * len(ref_out)
        self.count += len(ref_out)


CHUNK_BYTES = 256 * 2**20  # the layer outputs of one chunk of images, per model


def _chunk_size(per_image: int | None) -> int:
    """How many images the next chunk takes: one to learn the size of an image's tensors, then as
    many as fit ``CHUNK_BYTES``."""
    return 1 if per_image is None else max(1, CHUNK_BYTES // max(per_image, 1))


def compare(float_onnx: Path, artifact: Path, x: Any, fake_quant: bool = False) -> list[LayerError]:
    """Per-layer error of ``artifact`` (.onnx or OpenVINO .xml) against ``float_onnx`` on images
    ``x`` (an array, or anything sliced like one): quantized layers first, lowest SQNR when run
    alone first. Layers whose tensors the artifact does not expose are left out. ``fake_quant``: an
    ONNX layer runs alone as its Q/DQ is written (the arithmetic of TensorRT), not through ONNX
    Runtime's x86 integer kernels. The images run in chunks and the errors are summed, so memory
    holds one chunk's layer outputs whatever the number of images."""
    import onnx

    float_model = onnx.load(str(float_onnx))
    found = layers(float_model)
    wanted = sorted({t for layer in found for t in (layer.input, layer.output, *layer.others)})
    reference = _OnnxProbe(float_model, wanted)
    other: _OnnxProbe | _OpenVinoProbe
    local: _OnnxLocal | _OpenVinoLocal
    if artifact.suffix == ".onnx":
        model = onnx.load(str(artifact))
        other = _OnnxProbe(model, wanted)  # adds the probed tensors to its outputs
        spans = [
            ((la.input, *la.others), la.output)
            for la in found
            if la.input in other.quantized and all(t in reference.names for t in (la.input, *la.others))
        ]
        local = _OnnxLocal(model, spans, fake_quant)
    elif artifact.suffix == ".xml":
        other = _OpenVinoProbe(artifact, found, tuple(np.shape(x[:1])[1:]))
        local = _OpenVinoLocal(artifact, [la for la in found if la.input in other.quantized])
    else:
        raise EdgeVitError(
            f"{artifact.name}: layer-wise comparison reads ONNX (.onnx) and OpenVINO (.xml) artifacts",
            "compare an onnxruntime, tensorrt or openvino target",
        )
    tallies: dict[str, _Tally] = {}
    start, per_image = 0, None
    while start < len(x):
        chunk = np.ascontiguousarray(x[start : start + _chunk_size(per_image)], np.float32)
        ref, out = reference(chunk), other(chunk)
        alone = local(ref)
        per_image = sum(a.nbytes for a in (*ref.values(), *out.values(), *alone.values())) // len(chunk)
        for layer in found:
            t_in, t_out = layer.input, layer.output
            if not all(t in ref and t in out for t in (t_in, t_out)):
                continue
            if ref[t_out].shape != out[t_out].shape or ref[t_in].shape != out[t_in].shape:
                continue
            tallies.setdefault(t_out, _Tally()).add(
                ref[t_in], out[t_in], ref[t_out], out[t_out], alone.get(t_out)
            )
        start += len(chunk)
        del ref, out, alone
    results = []
    for order, layer in enumerate(found):
        if layer.output not in tallies:
            continue
        tally = tallies[layer.output]
        quant = layer.input in other.quantized
        s_local = tally.local.db() if tally.local is not None else _CAP_DB
        results.append(
            LayerError(
                layer.name,
                order,
                layer.block,
                layer.op,
                layer.node,
                quant,
                tally.inp.db(),
                tally.out.db(),
                s_local,
                tally.cosines / tally.count,
            )
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
