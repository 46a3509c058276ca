"""Core ML target: an ML Program (.mlpackage) for iPhone, iPad and Mac, built with coremltools.

The float model is exported with ``torch.export`` and converted to an mlprogram for the device
profile's deployment target (``coreml.deployment_target``, iOS 17 by default; a mode that needs
a newer OS raises it, and the report says so). Precisions and ``options.mode``:

- ``fp16`` (default ``mode: none``): FP16 compute; the op types in ``float32_ops`` (default
  ``[layer_norm]``: its variance overflows float16 on large activations) are computed in FP32.
  ``palettize4``/``palettize6`` store the Linear weights as 4/6-bit look-up tables per group of
  ``palette_group_size`` output channels; ``int4_block`` as INT4 per block of ``block_size``
  (both iOS 18).
- ``fp32``: FP32 compute (the weights may be compressed with the same modes).
- ``int8``: ``weights`` (default): per-channel symmetric INT8 Linear weights, FP16 compute;
  ``w8a8``: the same weights plus INT8 activations at the Linear inputs (and outputs, as
  coremltools' activation patterns do, unless ``quantize.linear_outputs: float``), calibrated on
  the recipe's calibration set (iOS 17; ``options.input_ranges: mse`` shrinks each input's range
  by its factor of least error).
  The patch-embedding Conv joins with the quantize stage's ``patch_embed: true``. LayerNorm,
  Softmax, GELU and the residual Adds stay float.

Core ML's ``predict`` exists only on macOS. Elsewhere the artifact is checked by
:mod:`edgevit.targets.coreml_mil` (``simulated:mil-reference``); W8A8 calibration runs on the
same evaluator (:mod:`edgevit.targets.coreml_w8a8`), so it works on Linux too (coremltools' own
calibration calls ``predict``).
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgevit.devices import CoreMLSettings, DeviceProfile
from edgevit.errors import LoweringError
from edgevit.quant.scheme import Int8Scheme, coreml_scheme
from edgevit.targets.base import INPUT_NAME, OUTPUT_NAME, Availability, LowerRequest, Runner, Target
from edgevit.targets.coreml_mil import MilReference, load_program, quiet
from edgevit.targets.coreml_w8a8 import quantize_activations
from edgevit.targets.input_ranges import InputRangeOptions, constant_weight

Mode = Literal["none", "weights", "w8a8", "palettize4", "palettize6", "int4_block"]
INT8_MODES = ("weights", "w8a8")
FLOAT_MODES = ("none", "palettize4", "palettize6", "int4_block")
# The OS generation (as iOS major version) each mode's ops need.
MODE_OS = {"none": 16, "weights": 16, "w8a8": 17, "palettize4": 18, "palettize6": 18, "int4_block": 18}
_OS_LEVEL = {"iOS16": 16, "iOS17": 17, "iOS18": 18, "macOS13": 16, "macOS14": 17, "macOS15": 18}


class CoremlOptions(InputRangeOptions):
    """``targets[].options`` of a coreml target (``input_ranges``: ``mode: w8a8`` only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = None  # int8: weights (default) | w8a8; fp16/fp32: none (default) | ...
    float32_ops: list[str] = Field(default_factory=lambda: ["layer_norm"])
    palette_group_size: int = Field(default=16, gt=0)
    block_size: int = Field(default=32, gt=0)

    def resolved_mode(self, precision: str) -> str:
        """The mode, with the precision's default filled in."""
        return self.mode or ("weights" if precision == "int8" else "none")


def deployment_target(settings: CoreMLSettings, mode: str) -> str:
    """The profile's deployment target, raised to the OS generation ``mode`` needs."""
    wanted = settings.deployment_target
    need = MODE_OS[mode]
    if _OS_LEVEL[wanted] >= need:
        return wanted
    return f"macOS{need - 3}" if wanted.startswith("macOS") else f"iOS{need}"


def _settings(device: DeviceProfile | None) -> CoreMLSettings:
    return (device.coreml if device is not None else None) or CoreMLSettings()


def coreml_runtime_available() -> bool:
    """True where Core ML itself can run a model (macOS with coremltools' native extension)."""
    if platform.system() != "Darwin":
        return False
    try:
        with quiet():
            from coremltools import libcoremlpython  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


class CoremlRunner(Runner):
    """Runs an .mlpackage through Core ML (macOS only), one image per ``predict`` call."""

    _model: Any = None

    @property
    def compute_units(self) -> str:
        """Where Core ML may run the model: the device profile's ``coreml.compute_units``."""
        return _settings(self.device).compute_units

    def _load(self) -> None:
        with quiet():
            import coremltools as ct

        self._model = ct.models.MLModel(str(self.artifact), compute_units=ct.ComputeUnit[self.compute_units])

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return predict_batch(self._model, batch)

    def findings(self) -> dict[str, Any]:
        return {"coreml_runtime": {"compute_units": self.compute_units}}

    def _close(self) -> None:
        self._model = None


def predict_batch(model: Any, batch: np.ndarray) -> np.ndarray:
    """Logits of a batch from a batch-1 model's ``predict`` (Core ML's MLModel, or the MIL
    reference evaluator), one call per image."""
    outs = [np.asarray(model.predict({INPUT_NAME: batch[i : i + 1]})[OUTPUT_NAME]) for i in range(len(batch))]
    out = np.concatenate(outs).astype(np.float32)
    if out.ndim > 2 and out.shape[0] == len(batch):  # a dense task's maps keep their layout
        return out
    return out.reshape(len(batch), -1)


class MilReferenceRunner(Runner):
    """Evaluates the .mlpackage's program on the host with NumPy (see coreml_mil); simulated."""

    simulated = "mil-reference"
    _ref: MilReference | None = None

    def _load(self) -> None:
        self._ref = MilReference(self.artifact)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return predict_batch(self._ref, batch)

    def findings(self) -> dict[str, Any]:
        if self._ref is None:
            return {}
        found = self._ref.findings()
        return {"simulation": found} if any(found.values()) else {}

    def _close(self) -> None:
        self._ref = None


def _layer_ops(prog: Any, onnx_path: Path) -> dict[Any, str]:
    """{MIL op: module path} of the linear/conv ops with a weight (constant, or compressed by a
    constexpr op), named after the ONNX export's layers: both graphs run them in the same order
    (coremltools names them by count, ``linear_5``, so the order is all there is to go by)."""
    from edgevit.targets.graph import weighted_layers

    weighted = [
        op
        for op in prog.functions["main"].operations
        if op.op_type in ("linear", "conv") and constant_weight(op)
    ]
    layers = weighted_layers(onnx_path)
    if len(weighted) != len(layers):
        raise LoweringError(
            f"the Core ML program has {len(weighted)} linear/conv ops but the ONNX export {len(layers)} layers",
            "report this as a bug: layers cannot be named in this model",
        )
    return dict(zip(weighted, layers, strict=True))


def _float_op_names(prog: Any, request: LowerRequest) -> dict[str, None]:
    """``op_name_configs`` that keep the quantize stage's ``float_layers`` float."""
    q = request.quantize
    if q is None or not q.float_layers:
        return {}
    from edgevit.targets.graph import check_float_layers

    by_layer = {layer: op.name for op, layer in _layer_ops(prog, request.onnx_path).items()}
    check_float_layers(q.float_layers, list(by_layer))
    return dict.fromkeys((by_layer[layer] for layer in q.float_layers), None)


class CoremlTarget(Target):
    """Core ML ML Program; Core ML runs it on macOS/iOS, other hosts check it by simulation."""

    name = "coreml"
    precisions = ("fp32", "fp16", "int8")
    modules = ("coremltools",)
    extra = "coreml"
    artifact_name = "model.mlpackage"
    options_schema = CoremlOptions
    calibration_methods = ("minmax",)
    float_layers = True  # int8 modes: the named layers keep float weights (and inputs, for w8a8)

    def availability(self) -> Availability:
        try:
            with quiet():
                import coremltools
        except Exception as exc:
            return Availability(
                False,
                f"coremltools is not importable ({type(exc).__name__}: {str(exc)[:120]}); "
                f"install it with: pip install 'edgevit[{self.extra}]'",
            )
        note = (
            ""
            if coreml_runtime_available()
            else "builds here; Core ML runs only on macOS, so artifacts are checked by simulation (mil-reference)"
        )
        return Availability(True, "", {"coremltools": str(coremltools.__version__)}, note)

    def int8_scheme(self, request: LowerRequest) -> Int8Scheme | None:
        if request.precision != "int8" or request.quantize is None:
            return None
        options = CoremlOptions.model_validate(request.options)
        if options.resolved_mode("int8") != "w8a8":
            return None  # weight-only INT8 computes in FP16: no activation grid
        return coreml_scheme(
            request.quantize.per_channel, request.quantize.linear_outputs == "int8", options.input_ranges
        )

    def parse_options(self, options: dict[str, Any], precision: str) -> BaseModel | None:
        parsed = CoremlOptions.model_validate(options)
        allowed = INT8_MODES if precision == "int8" else FLOAT_MODES
        if parsed.mode is not None and parsed.mode not in allowed:
            raise ValueError(f"mode {parsed.mode} is not for {precision}; use one of: {', '.join(allowed)}")
        if "input_ranges" in options and parsed.resolved_mode(precision) != "w8a8":
            raise ValueError(
                "input_ranges sets the INT8 activation grids of mode w8a8; set mode: w8a8 or drop it"
            )
        if precision == "fp32" and "float32_ops" in options:
            raise ValueError("float32_ops applies to FP16 compute; fp32 computes every op in float32")
        return parsed

    def build_settings(self, request: LowerRequest) -> dict[str, Any]:
        return {"coreml_deployment_target": _settings(request.device).deployment_target}

    def lower(self, request: LowerRequest, workdir: Path) -> Path:
        self.require()
        if request.checkpoint is None:
            raise LoweringError("the coreml target converts from the torch model, but none was given")
        options = CoremlOptions.model_validate(request.options)
        mode = options.resolved_mode(request.precision)
        target = deployment_target(_settings(request.device), mode)
        with quiet():
            import coremltools as ct
        model = self._convert(request, options, target)
        try:
            with quiet():
                model = self._compress(model, request, options, mode, workdir)
        except LoweringError:
            raise
        except Exception as exc:
            first = next((s.strip() for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
            raise LoweringError(f"coremltools could not compress the model ({mode}): {first[:240]}") from None
        self._describe_model(model, request, mode, target, ct.__version__)
        out = workdir / self.artifact_name
        with quiet():
            model.save(str(out))
        check_interface(out, request.model_config)
        return out

    @staticmethod
    def _convert(request: LowerRequest, options: CoremlOptions, target: str) -> Any:
        import torch

        with quiet():
            import coremltools as ct

        from edgevit.models.load import load

        cfg = request.model_config
        assert request.checkpoint is not None
        net = load(checkpoint=request.checkpoint).model.eval()
        fp32_ops = set(options.float32_ops)
        precision = (
            ct.precision.FLOAT32
            if request.precision == "fp32"
            else ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in fp32_ops)
        )
        try:
            with quiet():
                exported = torch.export.export(net, (torch.zeros(1, *cfg.input_size),)).run_decompositions({})
                return ct.convert(
                    exported,
                    inputs=[ct.TensorType(name=INPUT_NAME, shape=(1, *cfg.input_size), dtype=np.float32)],
                    outputs=[ct.TensorType(name=OUTPUT_NAME)],
                    convert_to="mlprogram",
                    minimum_deployment_target=getattr(ct.target, target),
                    compute_precision=precision,
                )
        except Exception as exc:  # torch.export and coremltools raise many kinds
            first = next((s.strip() for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
            raise LoweringError(
                f"coremltools could not convert the model: {type(exc).__name__}: {first[:240]}",
                "build this model for onnxruntime/openvino, or replace the layer that fails",
            ) from None

    @staticmethod
    def _weight_ops(request: LowerRequest) -> list[str]:
        """MIL op types whose weights (and, for W8A8, inputs) are quantized."""
        q = request.quantize
        return ["linear", "conv"] if q is not None and q.patch_embed else ["linear"]

    def _compress(
        self, model: Any, request: LowerRequest, options: CoremlOptions, mode: str, workdir: Path
    ) -> Any:
        import coremltools.optimize.coreml as cto

        ops = self._weight_ops(request)
        if mode == "none":
            return model
        if mode in ("palettize4", "palettize6"):
            palette = cto.OpPalettizerConfig(
                nbits=int(mode[-1]),
                mode="kmeans",
                granularity="per_grouped_channel",
                group_size=options.palette_group_size,
            )
            return cto.palettize_weights(
                model, cto.OptimizationConfig(op_type_configs=dict.fromkeys(ops, palette))
            )
        if mode == "int4_block":
            int4 = cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=options.block_size
            )
            return cto.linear_quantize_weights(
                model, cto.OptimizationConfig(op_type_configs=dict.fromkeys(ops, int4))
            )
        q = request.quantize
        assert q is not None
        weights = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity="per_channel" if q.per_channel else "per_tensor",
        )
        kept = _float_op_names(model._mil_program, request)
        if mode == "w8a8":
            scheme = self.int8_scheme(request)
            assert scheme is not None
            model = quantize_activations(model, request, scheme, ops, workdir, kept)
        config = cto.OptimizationConfig(op_type_configs=dict.fromkeys(ops, weights), op_name_configs=kept)
        return cto.linear_quantize_weights(model, config)

    @staticmethod
    def _describe_model(model: Any, request: LowerRequest, mode: str, target: str, version: str) -> None:
        """Metadata an app developer reads in Xcode: labels, preprocessing, how it was built."""
        cfg = request.model_config
        labels = cfg.class_names or [str(i) for i in range(cfg.num_classes)]
        model.short_description = f"{cfg.architecture}, {request.precision} ({mode}), built by edgevit"
        model.input_description[INPUT_NAME] = (
            f"float32 1x{'x'.join(map(str, cfg.input_size))} RGB image, (pixel/255 - mean) / std with "
            f"mean {list(cfg.mean)} and std {list(cfg.std)}"
        )
        h, w = cfg.image_size
        model.output_description[OUTPUT_NAME] = {
            "segmentation": f"float32 1x{cfg.num_classes}x{h}x{w} per-pixel logits, channels in class_names order",
            "depth": f"float32 1x1x{h}x{w} depth in metres",
        }.get(cfg.task, f"float32 1x{cfg.num_classes} logits, in class_names order")
        meta = model.user_defined_metadata
        meta["edgevit.task"] = cfg.task
        meta["edgevit.class_names"] = json.dumps(labels)
        meta["edgevit.architecture"] = cfg.architecture
        meta["edgevit.mean"] = json.dumps(list(cfg.mean))
        meta["edgevit.std"] = json.dumps(list(cfg.std))
        meta["edgevit.precision"] = request.precision
        meta["edgevit.mode"] = mode
        meta["edgevit.deployment_target"] = target
        meta["edgevit.coremltools"] = version

    def quantized_layers(self, artifact: Path, onnx_path: Path) -> list[str]:
        prog, _ = load_program(artifact)
        return [
            layer
            for op, layer in _layer_ops(prog, onnx_path).items()
            if op.inputs["weight"].op.op_type.startswith("constexpr_")  # compressed int8 weights
        ]

    def describe(self, artifact: Path) -> dict[str, Any]:
        prog, spec = load_program(artifact)
        meta = dict(spec.description.metadata.userDefined)
        ops = [op for op in prog.functions["main"].operations if op.op_type != "const"]
        counts: dict[str, Counter[str]] = {}
        compressed: Counter[str] = Counter()
        for op in ops:
            if op.op_type.startswith("constexpr_"):
                compressed[_weight_format(op)] += 1
                continue
            counts.setdefault(op.op_type, Counter())[_op_precision(op)] += 1
        compute = [op for op in ops if not op.op_type.startswith("constexpr_")]
        return {
            "ops": {kind: dict(c) for kind, c in sorted(counts.items(), key=lambda kv: -sum(kv[1].values()))},
            "op_total": len(compute),
            "coreml": {
                "interface": interface(spec),
                "deployment_target": meta.get("edgevit.deployment_target"),
                "mode": meta.get("edgevit.mode"),
                "specification_version": int(spec.specificationVersion),
                "compressed_weights": dict(compressed),
            },
        }

    def runner_type(self, device: DeviceProfile | None) -> type[Runner]:
        return CoremlRunner if coreml_runtime_available() else MilReferenceRunner


def interface(spec: Any) -> dict[str, Any]:
    """A saved package's input/output as its spec declares them, and its class names."""
    arrays = spec.description.input[0].type.multiArrayType
    dtypes = {arrays.FLOAT32: "float32", arrays.FLOAT16: "float16", arrays.INT32: "int32"}
    meta = spec.description.metadata.userDefined
    return {
        "input": {
            "name": spec.description.input[0].name,
            "shape": [int(d) for d in arrays.shape],
            "dtype": dtypes.get(arrays.dataType, str(arrays.dataType)),
        },
        "output": {"name": spec.description.output[0].name},
        "class_names": json.loads(meta["edgevit.class_names"]) if "edgevit.class_names" in meta else None,
    }


def check_interface(package: Path, cfg: Any) -> None:
    """Raise LoweringError unless the package's interface is the model config's."""
    got = interface(load_program(package)[1])
    want = {
        "input": {"name": INPUT_NAME, "shape": [1, *cfg.input_size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME},
        "class_names": cfg.class_names or [str(i) for i in range(cfg.num_classes)],
    }
    if got != want:
        raise LoweringError(
            f"the saved {package.name} declares {got}, expected {want}", "report this as a bug"
        )


def _dtype_name(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    try:
        return str(types.builtin_to_string(var.dtype))
    except Exception:
        return "?"


def _weight_format(op: Any) -> str:
    """What a constexpr op stores: int8 / int4 affine weights, or an n-bit palette."""
    if op.op_type == "constexpr_lut_to_dense":
        lut = op.lut.val
        return f"{int(np.log2(lut.shape[-2]))}-bit palette"
    data = getattr(op, "quantized_data", None) or getattr(op, "data", None)
    return _dtype_name(data) if data is not None else op.op_type


def _op_precision(op: Any) -> str:
    """The op's output dtype, plus compressed weights or quantized inputs feeding it."""
    label = _dtype_name(op.outputs[0]) if op.outputs else "?"
    extras = []
    for var in op.inputs.values():
        for v in var if isinstance(var, (list, tuple)) else [var]:
            src = getattr(v, "op", None)
            if src is None:
                continue
            if src.op_type.startswith("constexpr_"):
                extras.append(f"{_weight_format(src)} weights")
            elif src.op_type == "dequantize":
                extras.append("int8 input")
    return f"{label} ({', '.join(sorted(set(extras)))})" if extras else label


from edgevit.targets import TARGETS  # noqa: E402

TARGETS.add(CoremlTarget.name, CoremlTarget())
