"""Reading .tflite flatbuffers: the ops of the main graph, their tensor types, and what is constant.

Used to pick the ops the quantizer may touch (by their scope, i.e. output tensor names) and to
report op counts by type and precision, so a user sees what stayed float. Needs only the
flatbuffer schema that ships with ai-edge-litert.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Ops that convert between precisions: reported as ``from->to`` rather than a compute precision.
_CONVERT_OPS = ("QUANTIZE", "DEQUANTIZE")
_INT_TYPES = {"INT8": "int8", "UINT8": "int8", "INT16": "int16", "INT4": "int4"}
_FLOAT_TYPES = {"FLOAT32": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16"}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of an op."""

    name: str
    dtype: str  # the schema's TensorType name, e.g. FLOAT32, INT8
    constant: bool  # has data in the file (a weight or a constant)


@dataclass(frozen=True)
class OpInfo:
    """One operator of the main subgraph."""

    kind: str  # builtin operator name, e.g. FULLY_CONNECTED
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def scope(self) -> str:
        """The scope ai-edge-quantizer matches recipes against: output names joined by ';', plus ';'."""
        names = [t.name for t in self.outputs if t.name] or [t.name for t in self.inputs if t.name]
        return ";".join(names) + (";" if names else "")

    @property
    def has_constant_weight(self) -> bool:
        """True when the second input (the weight slot) is constant: a Linear/Conv, not act x act."""
        return any(t.constant for t in self.inputs[1:2])

    @property
    def precision(self) -> str:
        """What the op computes in: int8/int16 (quantized activations), dynamic-int8 (float
        activations, int8 weights quantized on the fly), fp16, fp32; ``a->b`` for (de)quantize."""
        if self.kind in _CONVERT_OPS and self.inputs and self.outputs:
            return f"{_label(self.inputs[0].dtype)}->{_label(self.outputs[0].dtype)}"
        activations = [t.dtype for t in self.inputs if not t.constant]
        for dtype in activations:
            if dtype in _INT_TYPES:
                return _INT_TYPES[dtype]
        if any(t.constant and t.dtype in _INT_TYPES for t in self.inputs[1:2]):
            return f"dynamic-{_INT_TYPES[self.inputs[1].dtype]}"
        floats = [_FLOAT_TYPES[d] for d in activations if d in _FLOAT_TYPES]
        return floats[0] if floats else (_label(activations[0]) if activations else "const")


def _label(dtype: str) -> str:
    return _INT_TYPES.get(dtype) or _FLOAT_TYPES.get(dtype) or dtype.lower()


def read_ops(path: Path) -> list[OpInfo]:
    """The operators of the model's first (main) subgraph, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    buf = path.read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)

    def tensor(index: int) -> TensorInfo:
        t = graph.Tensors(index)
        data = model.Buffers(t.Buffer())
        constant = data is not None and (data.DataLength() > 0 or data.Size() > 0)
        return TensorInfo((t.Name() or b"").decode(), type_names.get(t.Type(), str(t.Type())), constant)

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        kind = op_names.get(builtin, f"OP_{builtin}")
        if kind == "CUSTOM":
            kind = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
        ins = tuple(tensor(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0)
        outs = tuple(tensor(op.Outputs(j)) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0)
        ops.append(OpInfo(kind, ins, outs))
    return ops


def op_counts(ops: list[OpInfo]) -> dict[str, dict[str, int]]:
    """``{op kind: {precision: count}}``, kinds sorted by count (most first)."""
    counts: Counter[tuple[str, str]] = Counter((op.kind, op.precision) for op in ops)
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, precision), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        by_kind.setdefault(kind, {})[precision] = n
    return dict(sorted(by_kind.items(), key=lambda kv: -sum(kv[1].values())))


def scope_regex(ops: list[OpInfo]) -> str:
    """A regex matching exactly the scopes of ``ops`` (for ai-edge-quantizer's per-scope recipes)."""
    return "^(?:" + "|".join(re.escape(op.scope) for op in ops) + ")$"


def module_path(op: OpInfo) -> str | None:
    """The torch module path litert-torch recorded in an op's scope, e.g. ``…/Sequential_blocks/
    ….Block_0/…Attention_attn/torch.nn.modules.linear.Linear_qkv;1;`` → ``blocks.0.attn.qkv``
    (each segment is ``<qualified class>_<attribute>``). None when the scope holds no module
    path, as for the last op, which is named after the model output."""
    for part in reversed(op.scope.split(";")):
        segments = part.split("/")
        if len(segments) < 2:
            continue
        # [0]: the root; a private class's leading underscores are not the separator
        attrs = [seg.rpartition(".")[2].lstrip("_").partition("_")[2] for seg in segments[1:]]
        return ".".join(attrs) if all(attrs) else None
    return None


def _same_layer(scoped: str, layer: str) -> bool:
    """Whether a scope's module path names ``layer``. A container a model iterates over instead of
    calling (a dense model's blocks, a decoder's ModuleList) leaves no scope of its own: its
    segment is missing ("0.attn.qkv" for blocks.0.attn.qkv, "dense_head.0" for dense_head.proj.0)."""
    want, have = layer.split("."), scoped.split(".")
    if not have or have[-1] != want[-1]:
        return False
    rest = iter(want)
    return all(seg in rest for seg in have)  # a subsequence, in order


def weighted_layers(ops: list[OpInfo], layers: list[str]) -> dict[int, str]:
    """{index in ``ops``: module path} of each op with a constant weight (FULLY_CONNECTED / CONV_2D), given the
    model's Linear/Conv layers in execution order (from the exported ONNX). ViT layers run one
    after another, so the k-th weighted op is the k-th layer; a scope that names a different
    module means the two graphs do not line up, which is an error."""
    from edgevit.errors import LoweringError

    weighted = [
        i
        for i, op in enumerate(ops)
        if op.kind in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D") and op.has_constant_weight
    ]
    if len(weighted) != len(layers):
        raise LoweringError(
            f"the .tflite has {len(weighted)} Linear/Conv ops but the ONNX export {len(layers)} layers",
            "report this as a bug: layers cannot be named in this model",
        )
    for i, layer in zip(weighted, layers, strict=True):
        named = module_path(ops[i])
        if named is not None and not _same_layer(named, layer):
            raise LoweringError(
                f"the .tflite's op for layer {layer} is scoped {named}",
                "report this as a bug: layers cannot be named in this model",
            )
    return dict(zip(weighted, layers, strict=True))
