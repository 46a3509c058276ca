"""TFLite / LiteRT target: litert-torch converts the float model; ai-edge-quantizer makes FP16/INT8.

The artifact is a batch-1 ``model.tflite`` (the shape phones run). INT8 modes (``options.mode``):

- ``static`` (default): W8A8 on the Linear layers (FULLY_CONNECTED with constant weights),
  calibrated on the recipe's calibration set; attention matmuls join with ``matmul_scope: all``,
  the patch-embedding Conv with ``patch_embed: true``. LayerNorm, Softmax, GELU and the residual
  Adds stay float.
- ``dynamic``: int8 weights, activations quantized on the fly (no calibration).
- ``weight_only``: int8 weights dequantized to float before the op (smaller file, float compute).
- ``full``: every op ai-edge-quantizer supports, static INT8, with INT8 model input/output.
  Opt-in only: users of peer tools report that quantizing the normalisations, softmax and
  residual adds wrecks ViT accuracy; on the digits model it kept top-1 but lowered the logit
  SQNR from 37.6 to 25.6 dB.

FP16 stores the weights as float16 (dequantized at load on CPUs; GPU delegates compute in FP16).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata as md
import importlib.util
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgevit import agent
from edgevit.errors import LoweringError, TargetUnavailableError
from edgevit.quant.scheme import Int8Scheme, tflite_dynamic_scheme, tflite_scheme
from edgevit.targets.base import Availability, LowerRequest, Runner, Target
from edgevit.targets.calibration import calibration_batches
from edgevit.targets.graph import check_float_layers
from edgevit.targets.graph import weighted_layers as onnx_layers
from edgevit.targets.tflite_graph import OpInfo, op_counts, read_ops, scope_regex, weighted_layers

_DISTRIBUTIONS = {"litert_torch": "litert-torch", "ai_edge_quantizer": "ai-edge-quantizer"}


class TfliteOptions(BaseModel):
    """``targets[].options`` of a tflite target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["static", "dynamic", "weight_only", "full"] = "static"


def interpreter_class() -> Any:
    """LiteRT's Interpreter from ai-edge-litert, else from tflite-runtime (the on-device package)."""
    try:
        return agent.interpreter_class()
    except agent.AgentError as exc:
        raise TargetUnavailableError(str(exc).split(";")[0], "pip install ai-edge-litert") from None


class TfliteRunner(Runner):
    """Runs a .tflite file with LiteRT's interpreter (XNNPACK delegate, ``threads`` threads) through
    the profiling agent's session: a batch larger than the model's (1) runs one image at a time."""

    _session: Any = None

    def _load(self) -> None:
        interpreter_class()  # a clear TargetUnavailableError when no interpreter is installed
        self._session = agent.TfliteSession(self.artifact, self.threads)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session(batch)

    def _close(self) -> None:
        self._session = None


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    """Silence litert-torch's progress lines (printed on stdout, which belongs to --json)."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


_OP_PATTERNS = (
    re.compile(r"Lowering not found: (\S+)"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"call_function\[target=([\w.]+)\]"),
)
_SOURCE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def conversion_error(exc: BaseException) -> LoweringError:
    """A one-line LoweringError naming the op litert-torch failed on (searched in the whole chain)."""
    texts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    text = "\n".join(texts)
    op = next((m.group(1) for p in _OP_PATTERNS for m in [p.search(text)] if m), None)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if op is None:
        return LoweringError(
            f"litert-torch could not convert the model ({type(exc).__name__}: {first[:200]})",
            "build this model for onnxruntime/openvino, or replace the layer that fails",
        )
    op = op.removeprefix("torch.ops.")
    origin = ""
    if "Original traceback" in text:
        frames = _SOURCE.findall(text.split("Original traceback", 1)[1])
        if frames:
            path, line, func = frames[-1]
            origin = f" (from {Path(path).name}:{line} in {func})"
    return LoweringError(
        f"litert-torch cannot convert op {op}{origin}: {first[:160]}",
        f"replace {op} in the model with supported ops, or build it for onnxruntime/openvino",
    )


def convert(model: Any, input_shape: tuple[int, int, int], out: Path) -> Path:
    """Convert a torch model to a float32, batch-1 .tflite at ``out``."""
    import torch

    sample = (torch.zeros(1, *input_shape),)
    try:
        with _no_progress():
            import litert_torch

            litert_torch.convert(model.eval(), sample).export(str(out))
    except Exception as exc:  # litert-torch raises many kinds (RuntimeError, JAX, MLIR, asserts)
        raise conversion_error(exc) from None
    return out


@functools.lru_cache(maxsize=1)
def _float_tflite(checkpoint: str, stamp: tuple[int, int], input_shape: tuple[int, int, int]) -> bytes:
    """The float .tflite of a checkpoint, converted once per process for all of a build's targets
    (``stamp``, the weights' mtime and size, keys out a checkpoint rewritten in place)."""
    import tempfile

    from edgevit.models.load import load

    model = load(checkpoint=Path(checkpoint)).model
    with tempfile.TemporaryDirectory(prefix="edgevit-tflite-") as tmp:
        return convert(model, input_shape, Path(tmp) / "float.tflite").read_bytes()


def _layers(ops: list[OpInfo], request: LowerRequest) -> dict[int, str]:
    """{op index: module path} of the Linear/Conv ops, named after the ONNX export's layers."""
    return weighted_layers(ops, onnx_layers(request.onnx_path))


def _selected(ops: list[OpInfo], request: LowerRequest, mode: str) -> dict[str, list[OpInfo]]:
    """The ops a non-``full`` mode quantizes under the quantize stage's scope, by op kind; the
    Linear/Conv layers named in ``float_layers`` stay float."""
    q = request.quantize
    assert q is not None
    layer_of = _layers(ops, request) if q.float_layers else {}
    check_float_layers(q.float_layers, list(layer_of.values()))
    chosen: dict[str, list[OpInfo]] = {}
    for i, op in enumerate(ops):
        if layer_of.get(i) in q.float_layers:
            continue
        weighted = op.has_constant_weight
        take = (
            (op.kind == "FULLY_CONNECTED" and weighted)
            or (
                op.kind in ("FULLY_CONNECTED", "BATCH_MATMUL")
                and q.matmul_scope == "all"
                and mode == "static"
            )
            or (op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and q.patch_embed and weighted)
        )
        if take:
            chosen.setdefault(op.kind, []).append(op)
    return chosen


_CALIBRATED: dict[str, dict[str, Any]] = {}  # the last few calibrations of this process


def _calibrated(q: Any, float_path: Path, request: LowerRequest) -> dict[str, Any]:
    """Activation ranges: the global min/max over the calibration set of the ops quantizer ``q``
    is configured for (remembered per model, recipe and calibration set, for this process).

    ai-edge-quantizer's own calibrate() keeps a moving average of per-sample ranges, which
    clips the tails: on the digits model, logit SQNR 22.8 dB with it vs 37.6 dB with min/max.
    So each sample is calibrated alone and the ranges are merged here.
    """
    from ai_edge_quantizer.utils import qsv_utils

    assert request.calibration is not None
    digest = hashlib.sha256(float_path.read_bytes())
    digest.update(json.dumps(q.get_quantization_recipe(), sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(request.calibration).tobytes())
    key = digest.hexdigest()
    if key in _CALIBRATED:
        return _CALIBRATED[key]
    signatures = interpreter_class()(model_path=str(float_path)).get_signature_list()
    signature = next(iter(signatures))
    name = signatures[signature]["inputs"][0]
    merged: dict[str, Any] = {}
    for batch in calibration_batches(request):
        for i in range(len(batch)):
            for tensor, qsv in q.calibrate({signature: [{name: batch[i : i + 1]}]}, num_threads=2).items():
                merged[tensor] = qsv_utils.min_max_update(merged[tensor], qsv) if tensor in merged else qsv
    while len(_CALIBRATED) >= 4:
        _CALIBRATED.pop(next(iter(_CALIBRATED)))
    _CALIBRATED[key] = merged
    return merged


class TfliteTarget(Target):
    """LiteRT (TFLite) with XNNPACK on the host CPU; the same .tflite runs on Android/embedded."""

    name = "tflite"
    precisions = ("fp32", "fp16", "int8")
    modules = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")
    extra = "tflite"
    artifact_name = "model.tflite"
    runner_class = TfliteRunner
    revision = 2  # 2: global min/max calibration
    float_layers = True
    options_schema = TfliteOptions
    calibration_methods = ("minmax",)  # ai-edge-quantizer's static INT8 takes min/max ranges

    def availability(self) -> Availability:
        # litert-torch takes ~10 s to import (it loads JAX): look it up without importing it.
        versions = {}
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                return Availability(
                    False, f"{module} is not installed; install it with: pip install 'edgevit[{self.extra}]'"
                )
            versions[module] = md.version(_DISTRIBUTIONS.get(module, module.replace("_", "-")))
        try:
            interpreter_class()
        except TargetUnavailableError as exc:
            return Availability(False, exc.message)
        return Availability(True, "", versions)

    def int8_scheme(self, request: LowerRequest) -> Int8Scheme | None:
        if request.precision != "int8" or request.quantize is None:
            return None
        mode = TfliteOptions.model_validate(request.options).mode
        if mode == "dynamic":
            return tflite_dynamic_scheme(request.quantize.per_channel)
        if mode != "static":
            return None  # weight-only and full INT8 are other grids
        return tflite_scheme(request.quantize.per_channel)

    def parse_options(self, options: dict[str, Any], precision: str) -> BaseModel | None:
        parsed = super().parse_options(options, precision)
        if "mode" in options and precision != "int8":
            raise ValueError(f"mode chooses the INT8 scheme; remove it for {precision}")
        return parsed

    def lower(self, request: LowerRequest, workdir: Path) -> Path:
        self.require()
        if request.checkpoint is None:
            raise LoweringError("the tflite target converts from the torch model, but none was given")
        options = TfliteOptions.model_validate(request.options)
        out = workdir / self.artifact_name
        weights = next(iter(request.checkpoint.glob("*.safetensors")), request.checkpoint)
        stamp = (weights.stat().st_mtime_ns, weights.stat().st_size)
        data = _float_tflite(str(request.checkpoint), stamp, request.model_config.input_size)
        if request.precision == "fp32":
            out.write_bytes(data)
            return out
        float_path = workdir / "float.tflite"
        float_path.write_bytes(data)
        try:
            self._quantize(float_path, out, request, options.mode)
        finally:
            float_path.unlink(missing_ok=True)
        return out

    def _quantize(self, float_path: Path, out: Path, request: LowerRequest, mode: str) -> None:
        from ai_edge_quantizer import qtyping, quantizer, recipe

        ops_enum = qtyping.TFLOperationName
        q = quantizer.Quantizer(str(float_path))
        calibration_q = None  # a quantizer configured for more ops than q, to calibrate once for all
        what = "FP16 weights" if request.precision == "fp16" else f"INT8 ({mode})"
        if request.precision == "fp16":
            q.add_weight_only_config(
                ".*", ops_enum.ALL_SUPPORTED, 16, algorithm_key=recipe.AlgorithmName.FLOAT_CASTING
            )
        elif mode == "full":
            assert request.quantize is not None
            if request.quantize.float_layers:
                raise LoweringError(
                    "options.mode full quantizes every op, so float_layers cannot keep layers float",
                    "use mode static (the default) with float_layers or an accuracy budget",
                )
            q.load_quantization_recipe(recipe.static_wi8_ai8())
        else:
            assert request.quantize is not None
            scheme = self.int8_scheme(request)
            per_channel = request.quantize.per_channel if scheme is None else scheme.per_channel
            granularity = (
                qtyping.QuantGranularity.CHANNELWISE if per_channel else qtyping.QuantGranularity.TENSORWISE
            )
            float_ops = read_ops(float_path)

            def configured(chosen: dict[str, list[OpInfo]]) -> Any:
                if not chosen:
                    raise LoweringError("the quantize scope selects no op", "set stages[].matmul_scope: all")
                configured_q = quantizer.Quantizer(str(float_path))
                for kind, ops in chosen.items():
                    regex, op_name = scope_regex(ops), ops_enum[kind]
                    if mode == "static":
                        configured_q.add_static_config(regex, op_name, 8, 8, granularity)
                    elif mode == "dynamic":
                        configured_q.add_dynamic_config(regex, op_name, 8, granularity)
                    else:
                        configured_q.add_weight_only_config(regex, op_name, 8, granularity)
                return configured_q

            q = configured(_selected(float_ops, request, mode))
            if request.quantize.float_layers:
                # Calibrate every op in scope, float or not: the ranges are then the same for every
                # candidate of an accuracy-budget search, and computed once per process.
                everything = replace(
                    request, quantize=request.quantize.model_copy(update={"float_layers": []})
                )
                calibration_q = configured(_selected(float_ops, everything, mode))
        try:
            # ai-edge-quantizer draws tqdm bars on stderr for every tensor: keep the log readable.
            with contextlib.redirect_stderr(io.StringIO()):
                result = None
                if q.need_calibration:
                    result = _calibrated(calibration_q or q, float_path, request)
                q.quantize(result, enable_progress_report=False).export_model(str(out), overwrite=True)
        except LoweringError:
            raise
        except Exception as exc:  # the quantizer raises ValueError/RuntimeError with long messages
            first = next((s.strip() for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
            fix = (
                "use the default options.mode: static (Linear layers only)"
                if mode == "full"
                else "check the model converts to FP32 first"
            )
            raise LoweringError(f"ai-edge-quantizer failed on {what}: {first[:240]}", fix) from None

    def quantized_layers(self, artifact: Path, onnx_path: Path) -> list[str]:
        ops = read_ops(artifact)
        layer_of = weighted_layers(ops, onnx_layers(onnx_path))
        return [name for i, name in layer_of.items() if ops[i].precision not in ("fp32", "fp16", "bf16")]

    def describe(self, artifact: Path) -> dict[str, Any]:
        ops = read_ops(artifact)
        return {"ops": op_counts(ops), "op_total": len(ops)}


from edgevit.targets import TARGETS  # noqa: E402

TARGETS.add(TfliteTarget.name, TfliteTarget())
