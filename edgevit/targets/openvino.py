"""OpenVINO target: IR FP32, and INT8 through NNCF post-training quantization (transformer mode)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from edgevit.agent import OpenVinoSession
from edgevit.errors import LoweringError
from edgevit.quant.scheme import Int8Scheme, openvino_scheme
from edgevit.quant.settings import QuantizeStage
from edgevit.targets.base import Availability, LowerRequest, Runner, Target
from edgevit.targets.calibration import calibration_batches
from edgevit.targets.cpu import CpuInt8Options, int16_pairs, seven_bit_weights, weight_bits
from edgevit.targets.graph import nodes_of_layers
from edgevit.targets.input_ranges import InputRangeOptions, search_openvino_ranges


class OvRunner(Runner):
    """Runs an OpenVINO IR (.xml + .bin) on the CPU plugin in FP32 inference precision, through the
    profiling agent's session (each batch size compiled once with a static shape)."""

    _session: Any = None

    def _load(self) -> None:
        self._session = OpenVinoSession(self.artifact, self.threads)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session(batch)

    def _close(self) -> None:
        self._session = None


def convert_onnx(onnx_path: Path) -> Any:
    """``ov.convert_model`` of an ONNX file wherever it lies: OpenVINO's converter splits its path at
    commas (a list of inputs), so a path with one is read through a symlink to its folder (the
    external data files beside it stay reachable)."""
    import openvino as ov

    if "," not in str(onnx_path):
        return ov.convert_model(str(onnx_path))
    with tempfile.TemporaryDirectory(prefix="edgevit-ov-") as tmp:
        link = Path(tmp) / "model"
        os.symlink(onnx_path.resolve().parent, link, target_is_directory=True)
        return ov.convert_model(str(link / onnx_path.name))


def float_ops(model: Any, q: QuantizeStage) -> list[str]:
    """Ops NNCF must leave float under ``q``'s scope (see QuantizeStage).

    Attention — MatMuls whose inputs are both activations, or the ScaledDotProductAttention op
    that OpenVINO fuses them into — stays float unless ``matmul_scope: all``; the patch-embedding
    Convolution unless ``patch_embed: true``.
    """

    def is_const(node: Any) -> bool:
        while node.get_type_name() in ("Convert", "FakeQuantize", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        return bool(node.get_type_name() == "Constant")

    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "MatMul" and q.matmul_scope == "weights":
            if not any(is_const(v.get_node()) for v in op.input_values()):
                names.append(op.get_friendly_name())
        elif (kind == "ScaledDotProductAttention" and q.matmul_scope == "weights") or (
            kind == "Convolution" and not q.patch_embed
        ):
            names.append(op.get_friendly_name())
    return names


class OvOptions(CpuInt8Options, InputRangeOptions):
    """``targets[].options`` of the openvino backend."""


SMOOTH_QUANT_ALPHA = 0.5  # for the Linear layers' MatMuls; measured (see _advanced_parameters)


def _advanced_parameters(q: QuantizeStage, scheme: Int8Scheme) -> Any:
    """NNCF settings from the quantize stage: the activation range estimator of ``method``,
    SmoothQuant's alpha for MatMuls, and 7-bit weights (NNCF's overflow fix on every layer) for x86
    CPUs without VNNI, else none (NNCF's default fixes the first layer only; see targets/cpu.py).

    ``minmax`` is the global min/max over the calibration set, as for the other backends; NNCF's
    own default averages per-sample ranges, which clips the tails. ``percentile`` is NNCF's
    mean-of-quantiles estimator. SmoothQuant's alpha defaults to ``SMOOTH_QUANT_ALPHA`` (0.5, the
    SmoothQuant paper's): with 7-bit weights on an AVX2 host (tools/bench_calibration.py, digits /
    shapes logit SQNR) 0.2: 42.9 / 40.7 dB, 0.5: 44.2 / 42.7, 0.65: 44.4 / 43.6, NNCF's 0.95:
    43.7 / 41.3, off: 41.2 / 38.3. Off, NNCF would also place some input quantizers before a
    Reshape or Gather, where the layer-wise comparison, and so the accuracy budget, does not find
    them yet.
    """
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = {
        "minmax": RangeEstimatorParametersSet.MINMAX,
        "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
    }[q.method]
    alpha = -1.0 if scheme.smooth_alpha is None else scheme.smooth_alpha
    smooth = AdvancedSmoothQuantParameters(matmul=alpha)  # negative: off
    return AdvancedQuantizationParameters(
        activations_range_estimator_params=ranges,
        smooth_quant_alphas=smooth,
        overflow_fix=OverflowFix.ENABLE if scheme.weight_bits == 7 else OverflowFix.DISABLE,
    )


class OvTarget(Target):
    """OpenVINO on the host CPU."""

    name = "openvino"
    precisions = ("fp32", "int8")
    modules = ("openvino",)
    extra = "openvino"
    artifact_name = "model.xml"
    runner_class = OvRunner
    float_layers = True
    # 3: activation ranges from the quantize stage's method (global min/max by default);
    # 4: 7-bit weights on x86 CPUs without VNNI, none elsewhere; SmoothQuant alpha 0.5
    revision = 4
    calibration_methods = ("minmax", "percentile")
    options_schema = OvOptions

    def int8_scheme(self, request: LowerRequest) -> Int8Scheme | None:
        q = request.quantize
        if request.precision != "int8" or q is None:
            return None
        alpha = SMOOTH_QUANT_ALPHA if q.smooth_quant_alpha is None else q.smooth_quant_alpha
        # NNCF quantizes weights per channel whatever the recipe's per_channel says
        return openvino_scheme(
            seven_bit_weights(request, OvOptions),
            smooth_alpha=alpha if alpha >= 0 else None,
            int16_pairs=int16_pairs(request),
            input_ranges=OvOptions.model_validate(request.options).input_ranges,
        )

    def parse_options(self, options: dict[str, Any], precision: str) -> BaseModel | None:
        int8_only = [k for k in ("reduce_range", "input_ranges") if k in options]
        if int8_only and precision != "int8":
            raise ValueError(f"{', '.join(int8_only)} is for int8 {self.name} targets, not {precision}")
        return OvOptions.model_validate(options)

    def build_settings(self, request: LowerRequest) -> dict[str, Any]:
        return weight_bits(request, OvOptions)

    def availability(self) -> Availability:
        avail = super().availability()
        if not avail.available:
            return avail
        try:
            import nncf
        except Exception as exc:
            return Availability(False, f"nncf is not importable ({exc}); pip install 'edgevit[openvino]'")
        avail.versions["nncf"] = nncf.__version__
        return avail

    def lower(self, request: LowerRequest, workdir: Path) -> Path:
        self.require()
        import openvino as ov

        model = convert_onnx(request.onnx_path)
        out = workdir / self.artifact_name
        if request.precision == "int8":
            model = self._quantize(model, request)
        ov.save_model(model, str(out), compress_to_fp16=False)
        return out

    def _quantize(self, model: Any, request: LowerRequest) -> Any:
        # nncf imports torch's cpp_extension, which warns about CUDA on CPU-only hosts.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        import nncf

        assert request.quantize is not None
        batches = list(calibration_batches(request, batch=1))  # NNCF collects statistics per sample
        names = float_ops(model, request.quantize)
        kept = nodes_of_layers(
            request.onnx_path, request.quantize.float_layers
        )  # ONNX names = friendly names
        names += [
            op.get_friendly_name()
            for op in model.get_ops()
            if op.get_type_name() in ("MatMul", "Convolution")
            and any(op.get_friendly_name() == n or op.get_friendly_name().startswith(n + "/") for n in kept)
        ]
        ignored = nncf.IgnoredScope(names=names) if names else None
        scheme = self.int8_scheme(request)
        assert scheme is not None
        advanced = _advanced_parameters(request.quantize, scheme)
        # NNCF logs every ignored op at INFO and draws progress bars on stdout, which is for the
        # report (--json): keep it quiet (an accuracy-budget search runs it once per candidate).
        logging.getLogger("nncf").setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                quantized = nncf.quantize(
                    model,
                    nncf.Dataset(batches),
                    model_type=nncf.ModelType.TRANSFORMER,
                    subset_size=len(batches),
                    ignored_scope=ignored,
                    advanced_parameters=advanced,
                )
        except Exception as exc:
            raise LoweringError(f"NNCF quantization failed: {type(exc).__name__}: {exc}") from exc
        if scheme.input_ranges == "mse":
            search_openvino_ranges(quantized, batches, scheme)
        return quantized


from edgevit.targets import TARGETS  # noqa: E402

TARGETS.add(OvTarget.name, OvTarget())
