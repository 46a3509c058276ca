"""TensorRT target, host side: a TensorRT-ready ONNX and the plan the device builds its engine from.

TensorRT itself needs an NVIDIA GPU (on a Jetson it comes with JetPack), so on the host edgevit
produces what the device consumes:

- ``fp16``: the ONNX with float16 weights and compute, float32 input/output, LayerNormalization
  kept in float32 (it overflows in FP16);
- ``int8``: explicit-quantization ONNX — symmetric INT8 Q/DQ (zero points 0) with per-channel
  weights and per-tensor activations around the Linear layers only (the quantize stage's scope),
  calibrated on the recipe's calibration set; LayerNorm, Softmax, GELU and residual Adds carry no
  Q/DQ;
- ``build_engine.json``: precision flags, layers pinned to FP32, workspace, optimisation profile,
  DLA core and the TensorRT version the device profile expects, applied on the device by the
  profiling agent (``edgevit/agent.py``: it builds the engine, caches it by ONNX, plan, TensorRT
  version and GPU, keeps its timing cache, and runs it).

The host check runs the same ONNX with ONNX Runtime on the CPU as fake quantization
(``simulated:onnxruntime-fakequant``): accuracy only, never latency. Before anything reaches a
device the graph is linted against the ONNX ops TensorRT's parser supports (``lint``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from edgevit.agent import PLAN_NAME  # the agent reads the plan by this name
from edgevit.devices import DeviceProfile, TensorRTSettings
from edgevit.errors import LoweringError
from edgevit.fileio import atomic_write_json
from edgevit.quant.scheme import Int8Scheme, tensorrt_scheme
from edgevit.targets.base import INPUT_NAME, LowerRequest
from edgevit.targets.onnxruntime import OrtRunner, QdqOptions, QdqTarget, quantize_qdq

# ONNX operators TensorRT 10's ONNX parser (onnx-tensorrt, TensorRT 10.x) imports. Keep in step
# with the TensorRT version of the device profiles; an op outside it fails the build here.
_PARSER_OPS = """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor Gather
    GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
    GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN MatMul Max MaxPool Mean Min Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign
    Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor"""
TENSORRT_10_OPS = frozenset(_PARSER_OPS.split())
FP32_LAYERS = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")  # pinned in the plan


class TrtHostCheckRunner(OrtRunner):
    """ONNX Runtime on the CPU running the TensorRT-ready ONNX as fake quantization (Q/DQ kept,
    float ops): TensorRT's INT8 numerics, not ONNX Runtime's x86 integer kernels. On a CPU without
    VNNI those saturate 8-bit weights (digits default: 30.0 dB fused against 37.3 dB as written)."""

    simulated = "onnxruntime-fakequant"
    fake_quant = True


def settings(device: DeviceProfile | None) -> TensorRTSettings:
    """The device profile's ``tensorrt`` settings (defaults: TensorRT 10.3, GPU only)."""
    return (device.tensorrt if device is not None else None) or TensorRTSettings()


def lint(onnx_path: Path, version: str = "10.3") -> dict[str, Any]:
    """Ops of the graph TensorRT's ONNX parser does not support (empty when it takes them all).

    The op list is TensorRT 10's; for another major version the lint says it could not check."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    kinds = Counter(n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx"))
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    checked = version.split(".")[0] == "10"
    return {
        "tensorrt_version": version,
        "checked_against": "TensorRT 10 ONNX parser ops"
        if checked
        else f"nothing (no op list for TensorRT {version})",
        "unsupported": (sorted(k for k in kinds if k not in TENSORRT_10_OPS) + custom) if checked else [],
        "ops": dict(kinds.most_common()),
    }


def qdq_summary(onnx_path: Path) -> dict[str, Any]:
    """Q/DQ facts of an INT8 ONNX: how many, whether all are symmetric, what they feed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    quant = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [inits[n.input[2]] for n in quant if len(n.input) > 2 and n.input[2] in inits]
    feeds = Counter(
        op for n in quant if n.op_type == "DequantizeLinear" for op in consumers.get(n.output[0], [])
    )
    return {
        "qdq_nodes": len(quant),
        "symmetric": all(int(abs(z).max()) == 0 for z in zero_points if z.size),
        "int8": all(z.dtype.name == "int8" for z in zero_points),
        "dequantized_into": dict(feeds),
    }


def build_plan(request: LowerRequest, trt: TensorRTSettings) -> dict[str, Any]:
    """What the device's TensorRT build applies (see the module docstring). The profile is static at
    batch 1 (fastest, and what DLA needs); the agent runs larger batches one engine-batch at a time."""
    c, h, w = request.model_config.input_size
    shape = [1, c, h, w]
    return {
        "format_version": 1,
        "onnx": "model.onnx",
        "precision": request.precision,
        "flags": ["FP16", "INT8"] if request.precision == "int8" else ["FP16"],
        "explicit_quantization": request.precision == "int8",
        "layer_precisions": {op: "fp32" for op in FP32_LAYERS},
        "obey_precision_constraints": True,
        "workspace_mib": trt.workspace_mib,
        "optimization_profile": {INPUT_NAME: {"min": shape, "opt": shape, "max": shape}},
        "timing_cache": "timing.cache",  # kept per GPU and TensorRT version in the agent's engine cache
        "dla_core": trt.dla_core,
        "tensorrt_version": trt.version,
    }


class TensorrtTarget(QdqTarget):
    """TensorRT (device); on the host a TensorRT-ready ONNX + build plan, checked by ONNX Runtime
    (onnxruntime is what the host side needs; TensorRT runs on the device)."""

    name = "tensorrt"
    precisions = ("fp16", "int8")
    runner_class = TrtHostCheckRunner
    revision = 3  # 2: biases stay float; 3: the plan takes the device profile's tensorrt settings

    def build_settings(self, request: LowerRequest) -> dict[str, Any]:
        return {"tensorrt": settings(request.device).model_dump()}

    def int8_scheme(self, request: LowerRequest) -> Int8Scheme | None:
        if request.precision != "int8" or request.quantize is None:
            return None
        return tensorrt_scheme(
            request.quantize.per_channel,
            request.quantize.linear_outputs == "int8",
            QdqOptions.model_validate(request.options).input_ranges,
        )

    def lower(self, request: LowerRequest, workdir: Path) -> Path:
        self.require()
        trt = settings(request.device)
        found = lint(request.onnx_path, trt.version)
        if found["unsupported"]:
            raise LoweringError(
                f"TensorRT {found['tensorrt_version']}'s ONNX parser does not support "
                f"{', '.join(found['unsupported'])} in the exported graph",
                "replace those layers, or build this model for onnxruntime/openvino",
            )
        out = workdir / self.artifact_name
        if request.precision == "fp16":
            self._fp16(request.onnx_path, out)
        else:
            options = QdqOptions.model_validate(request.options)
            scheme = self.int8_scheme(request)
            assert scheme is not None
            quantize_qdq(request, workdir, out, options, scheme)
        atomic_write_json(workdir / PLAN_NAME, build_plan(request, trt))
        return out

    @staticmethod
    def _fp16(src: Path, out: Path) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(
            onnx.load(str(src)), keep_io_types=True, op_block_list=["LayerNormalization"]
        )
        onnx.save(model, str(out))

    def describe(self, artifact: Path) -> dict[str, Any]:
        plan = json.loads((artifact.parent / PLAN_NAME).read_text())
        info: dict[str, Any] = {
            "lint": lint(artifact, plan["tensorrt_version"]),
            "plan": PLAN_NAME,
            "flags": plan["flags"],
            "dla_core": plan["dla_core"],
        }
        if plan["precision"] == "int8":
            info["qdq"] = qdq_summary(artifact)
        return {"tensorrt": info}


from edgevit.targets import TARGETS  # noqa: E402

TARGETS.add(TensorrtTarget.name, TensorrtTarget())
