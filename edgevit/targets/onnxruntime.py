"""ONNX Runtime target: FP32 ONNX, and INT8 static QDQ (per-channel symmetric weights; on x86 CPUs
without VNNI, UINT8 ones that its kernels cannot saturate, see ``OrtOptions.unsigned_weights`` and
targets/cpu.py)."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgevit.agent import OrtSession
from edgevit.errors import LoweringError
from edgevit.quant.scheme import Int8Scheme, onnxruntime_scheme
from edgevit.targets.base import INPUT_NAME, LowerRequest, Runner, Target
from edgevit.targets.calibration import batches_per_pass, calibration_batches, memory_bounded_batch
from edgevit.targets.cpu import CpuInt8Options, int16_pairs, seven_bit_weights, weight_bits
from edgevit.targets.graph import nodes_of_layers, quantizable_nodes, scale_activations
from edgevit.targets.input_ranges import InputRangeOptions, search_qdq_ranges

QUANTIZED_OP_TYPES = ["MatMul", "Gemm", "Conv"]


class QdqOptions(InputRangeOptions):
    """``targets[].options`` of the QDQ ONNX backends (onnxruntime, tensorrt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activation_scale_factors: dict[str, float] = Field(
        default_factory=dict,
        description="int8: multiply the calibrated input scale of these layers (module paths, e.g. "
        "blocks.1.mlp.fc1) by a factor: widen a clipping range by hand, or damage a layer on purpose "
        "to test that gates and `edgevit compare` catch it",
    )

    @field_validator("activation_scale_factors")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not v > 0]
        if bad:
            raise ValueError(f"factors must be > 0 (not for {', '.join(bad)})")
        return value


class OrtOptions(QdqOptions, CpuInt8Options):
    """``targets[].options`` of the onnxruntime backend."""

    unsigned_weights: bool | None = Field(
        default=None,
        description="int8: UINT8 weights (symmetric, zero point 128), which ONNX Runtime multiplies with "
        "its U8U8 kernels: on x86 without VNNI these widen both operands to int16, so 8-bit weights "
        "cannot saturate and reduce_range is not needed (measured on an AVX2 host: as fast as INT8 "
        "weights). null (auto): on where the CPU would add INT8 products in saturating int16 pairs "
        "(x86 without VNNI, or an unknown remote CPU), off elsewhere (VNNI's fast kernels are u8 x s8)",
    )


def unsigned_weights(request: LowerRequest) -> bool:
    """Whether ONNX Runtime builds ``request`` with UINT8 weights (see ``OrtOptions``)."""
    choice = OrtOptions.model_validate(request.options).unsigned_weights
    return int16_pairs(request) if choice is None else choice


def ort_seven_bit(request: LowerRequest) -> bool:
    """Whether ONNX Runtime builds ``request`` with 7-bit weights: as asked, else only where its
    weights are signed and the CPU would saturate them (``targets/cpu.py``)."""
    choice = OrtOptions.model_validate(request.options).reduce_range
    if choice is None and unsigned_weights(request):
        return False
    return seven_bit_weights(request, OrtOptions)


class OrtRunner(Runner):
    """Runs an .onnx file on ONNX Runtime's CPU execution provider (``fake_quant``: see OrtSession)."""

    fake_quant: ClassVar[bool] = False
    _session: Any = None

    def _load(self) -> None:
        # the profiling agent's session
        self._session = OrtSession(self.artifact, self.threads, fake_quant=self.fake_quant)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session(batch)

    def _close(self) -> None:
        self._session = None


class QdqTarget(Target):
    """A backend whose INT8 artifact is a QDQ ONNX made by ``quantize_qdq`` (onnxruntime, tensorrt):
    ONNX Runtime's quantizer on the host, QdqOptions, layers kept float on request."""

    modules = ("onnxruntime",)
    extra = "onnxruntime"
    artifact_name = "model.onnx"
    float_layers = True
    options_schema = QdqOptions

    def parse_options(self, options: dict[str, Any], precision: str) -> BaseModel | None:
        parsed = self.options_schema.model_validate(options)
        int8_only = [
            k
            for k in sorted(options)
            if k in ("activation_scale_factors", "input_ranges", "reduce_range", "unsigned_weights")
        ]
        if int8_only and precision != "int8":
            raise ValueError(f"{', '.join(int8_only)} is for int8 {self.name} targets, not {precision}")
        return parsed


class OrtTarget(QdqTarget):
    """ONNX Runtime on the host CPU."""

    name = "onnxruntime"
    precisions = ("fp32", "int8")
    runner_class = OrtRunner
    options_schema = OrtOptions
    revision = 3  # 2: 7-bit weights on x86 CPUs without VNNI; 3: UINT8 8-bit weights there instead

    def build_settings(self, request: LowerRequest) -> dict[str, Any]:
        if request.precision != "int8":
            return {}
        unsigned = unsigned_weights(request)
        return {
            **weight_bits(request, OrtOptions),
            "int8_weight_bits": 7 if ort_seven_bit(request) else 8,
            "int8_weight_type": "uint8" if unsigned else "int8",
            **({"int8_pair_sums": "int32 (U8U8 kernels: operands widened to int16)"} if unsigned else {}),
        }

    def lower(self, request: LowerRequest, workdir: Path) -> Path:
        self.require()
        out = workdir / self.artifact_name
        if request.precision == "fp32":
            shutil.copyfile(request.onnx_path, out)
            return out
        return self._quantize(request, workdir, out)

    def int8_scheme(self, request: LowerRequest) -> Int8Scheme | None:
        if request.precision != "int8" or request.quantize is None:
            return None
        return onnxruntime_scheme(
            ort_seven_bit(request),
            request.quantize.per_channel,
            int16_pairs(request),
            request.quantize.linear_outputs == "int8",
            unsigned_weights(request),
            OrtOptions.model_validate(request.options).input_ranges,
        )

    def _quantize(self, request: LowerRequest, workdir: Path, out: Path) -> Path:
        options = OrtOptions.model_validate(request.options)
        scheme = self.int8_scheme(request)
        assert scheme is not None
        return quantize_qdq(request, workdir, out, options, scheme)


def quantize_qdq(
    request: LowerRequest,
    workdir: Path,
    out: Path,
    options: QdqOptions,
    scheme: Int8Scheme,
) -> Path:
    """Static INT8 QDQ ONNX of the request's scope on ``scheme``'s grid: symmetric INT8 weights per
    channel (7-bit: ONNX Runtime's ``reduce_range``); activations UINT8 asymmetric (ONNX Runtime's
    fastest on x86) or INT8 symmetric (TensorRT's explicit quantization)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    assert request.quantize is not None
    q = request.quantize
    symmetric_activations = scheme.activation_symmetric
    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(request.onnx_path), str(prepared))
    nodes = quantizable_nodes(prepared, q, nodes_of_layers(request.onnx_path, q.float_layers))
    if not nodes:
        prepared.unlink(missing_ok=True)
        raise LoweringError("the quantize scope selects no node", "set stages[].matmul_scope: all")

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[q.method]
    # Batches change nothing but the memory the calibration session needs: MinMax keeps each
    # batch's min and max; a histogram method stacks all the batches of a pass (so they must be
    # of one size). Its passes hold every activation of their images, so large images take
    # several (ONNX Runtime's CalibStridedMinMax; the histograms accumulate across passes).
    # Percentile on 64 images of ViT-Plus-tiny at 224 px: 3.3 GB in one pass, 1.1 GB in passes of 8.
    batch = memory_bounded_batch(request, even=q.method != "minmax")
    reader = calibration_reader(list(calibration_batches(request, batch)))
    passes = (
        {"CalibStridedMinMax": batches_per_pass(request, batch, len(reader))} if q.method != "minmax" else {}
    )
    try:
        # its histogram calibrators print progress to stdout, which is for the report (--json)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OP_TYPES,
                nodes_to_quantize=nodes,
                per_channel=scheme.per_channel,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QUInt8 if scheme.weight_unsigned else QuantType.QInt8,
                reduce_range=scheme.weight_bits == 7,
                calibrate_method=method,
                # TensorRT wants float biases (no INT32 DequantizeLinear): symmetric mode keeps them float.
                extra_options={
                    "WeightSymmetric": True,
                    "ActivationSymmetric": symmetric_activations,
                    "QuantizeBias": not symmetric_activations,
                    # float Linear outputs: no Q/DQ after a MatMul/Gemm (the scheme knows which)
                    **(
                        {}
                        if scheme.quantize_outputs
                        else {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
                    ),
                    **passes,
                },
            )
        if scheme.input_ranges == "mse":
            search_qdq_ranges(out, prepared, calibration_batches(request, batch), scheme)
    except Exception as exc:  # the quantizer raises bare exceptions of many kinds
        raise LoweringError(f"ONNX Runtime quantization failed: {type(exc).__name__}: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    factors = options.activation_scale_factors
    kept_float = set(request.quantize.float_layers) if request.quantize else set()
    factors = {layer: f for layer, f in factors.items() if layer not in kept_float}  # nothing to scale
    if factors:
        scale_activations(out, request.onnx_path, factors)
    return out


def calibration_reader(batches: Sequence[np.ndarray]) -> Any:
    """An ONNX Runtime CalibrationDataReader feeding ``batches`` to the model input, sized and
    with ``set_range`` for calibration in passes."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(batches[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Reader()


from edgevit.targets import TARGETS  # noqa: E402

TARGETS.add(OrtTarget.name, OrtTarget())
