"""Reading exported ONNX graphs: which nodes the INT8 quantizers may touch."""

from __future__ import annotations

from pathlib import Path

from edgevit.recipe.schema import QuantizeStage


def quantizable_nodes(onnx_path: Path, q: QuantizeStage) -> list[str]:
    """Names of the nodes to quantize under ``q``'s scope.

    MatMul/Gemm with a constant (weight) input are the Linear layers; with ``matmul_scope: all``
    the activation x activation attention MatMuls (q@k, attn@v) are added. The Conv is the patch
    embedding, quantized only with ``patch_embed: true``.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    consts = {init.name for init in model.graph.initializer}
    consts |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            if q.matmul_scope == "all" or any(i in consts for i in node.input):
                names.append(node.name)
        elif node.op_type == "Conv" and q.patch_embed:
            names.append(node.name)
    return names
