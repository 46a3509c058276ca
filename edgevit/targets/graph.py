"""Reading exported ONNX graphs: which nodes the INT8 quantizers may touch, and what they are."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from edgevit.quant.settings import QuantizeStage


def nodes_of_layers(onnx_path: Path, layers: list[str]) -> set[str]:
    """ONNX node names of the MatMul/Gemm/Conv layers named by module path (``float_layers``)."""
    import onnx

    if not layers:
        return set()
    model = onnx.load(str(onnx_path), load_external_data=False)
    named = {n.name: module_name(n)[0] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    check_float_layers(layers, list(dict.fromkeys(named.values())))
    return {node for node, layer in named.items() if layer in layers}


def check_float_layers(wanted: list[str], known: list[str]) -> None:
    """Raise LoweringError naming the ``float_layers`` entries that are not layers of the model."""
    from edgevit.errors import LoweringError

    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise LoweringError(
            f"float_layers names {', '.join(unknown)}, not a layer of this model",
            f"use module paths such as {', '.join(known[:6])}{' …' if len(known) > 6 else ''}",
        )


def quantizable_nodes(
    onnx_path: Path, q: QuantizeStage, exclude: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Names of the nodes to quantize under ``q``'s scope, but ``exclude`` (nodes kept float).

    MatMul/Gemm with a constant (weight) input are the Linear layers; with ``matmul_scope: all``
    the activation x activation attention MatMuls (q@k, attn@v) are added. The Conv is the patch
    embedding, quantized only with ``patch_embed: true``.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    consts = _constants(model)
    names = []
    for node in model.graph.node:
        if node.name in exclude:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            if q.matmul_scope == "all" or any(i in consts for i in node.input):
                names.append(node.name)
        elif node.op_type == "Conv" and q.patch_embed:
            names.append(node.name)
    return names


def _constants(model: Any) -> set[str]:
    consts = {init.name for init in model.graph.initializer}
    return consts | {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}


def weighted_layers(onnx_path: Path) -> list[str]:
    """Module paths of the layers with a weight (Linear: MatMul/Gemm with a constant input; Conv),
    in graph order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    consts = _constants(model)
    return [
        module_name(node)[0]
        for node in model.graph.node
        if (node.op_type in ("MatMul", "Gemm") and any(i in consts for i in node.input))
        or node.op_type == "Conv"
    ]


def module_name(node: Any) -> tuple[str, str]:
    """(layer, block) of an exported ONNX node, from the name scopes torch's exporter records:
    ``blocks.1.mlp.fc1`` for a Linear, ``blocks.0.attn.qk.0`` for a ViT-Plus attention matmul (a
    ``MatMul`` module), ``blocks.0.attn/matmul_3`` for another model's; the node's own name when the
    graph carries no scopes."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = [str(s) for s in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]")) if s]
    except (ValueError, SyntaxError):
        scopes = []
    name = node.name
    if len(scopes) >= 2:
        module, local = scopes[-2], scopes[-1]
        own = re.match(r"(linear|conv\d*d?)(_\d+)?$", local) or (
            re.match(r"matmul(_\d+)?$", local) and re.search(r"\.(qk|av)\.\d+$", module)
        )
        name = module if own else f"{module}/{local}"
    block = next((s for s in scopes if re.fullmatch(r"blocks\.\d+", s)), scopes[0] if scopes else "")
    return name, block


def scale_activations(quantized: Path, float_onnx: Path, factors: dict[str, float]) -> list[str]:
    """Multiply the input-activation scale of the named layers (module paths) of a QDQ ONNX by a
    factor, in place; returns the quantizer scales changed. A layer that is not quantized is an error."""
    import onnx
    from onnx import numpy_helper

    from edgevit.errors import LoweringError

    names = {
        n.name: module_name(n)[0] for n in onnx.load(str(float_onnx), load_external_data=False).graph.node
    }
    model = onnx.load(str(quantized))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    changed: list[str] = []
    quantized_layers = []
    for node in model.graph.node:
        layer = names.get(node.name)
        dq = producer.get(node.input[0]) if node.input else None
        if layer is None or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if layer not in quantized_layers:
            quantized_layers.append(layer)
        if layer in factors and dq.input[1] in inits:
            scale = inits[dq.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factors[layer], scale.name))
            changed.append(scale.name)
    missing = sorted(set(factors) - set(quantized_layers))
    if missing:
        raise LoweringError(
            f"options.activation_scale_factors names {', '.join(missing)}, not a quantized layer of this model",
            f"use one of: {', '.join(quantized_layers[:8])}{' …' if len(quantized_layers) > 8 else ''}",
        )
    onnx.save(model, str(quantized))
    return changed
