"""INT8 with the defaults a user of each backend's own tool would get, for side-by-side benchmarks.

Each peer takes the float artifact edgevit lowers from (the exported ONNX, or the float .tflite)
and the calibration images, and writes an artifact that edgevit's runner for that backend runs:

- ``ort-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` with its defaults.
- ``ort-static``: ``quantize_static`` with its defaults (QDQ, every op type it supports, per-tensor
  weights, MinMax), after ``quant_pre_process`` as its documentation asks.
- ``nncf-default``: ``nncf.quantize`` with its defaults (no model type).
- ``nncf-transformer``: ``nncf.quantize(model_type=TRANSFORMER)``, otherwise defaults.
- ``aieq-static``: ai-edge-quantizer's default static recipe, ``static_wi8_ai8`` (every op it
  supports), calibrated with its own ``calibrate``; ``aieq-dynamic``: its ``dynamic_wi8_afp32``.
- ``coremltools-w8a8``: from the FP16 .mlpackage, coremltools' W8A8 as its documentation shows it:
  ``linear_quantize_activations`` and ``linear_quantize_weights`` with a global
  ``linear_symmetric`` config (every op type it quantizes). Its own calibration calls Core ML's
  ``predict`` (macOS only), so the same global min/max statistics come from edgevit's MIL
  reference evaluator instead (``edgevit.targets.coreml_w8a8``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

PeerFn = Callable[[Path, np.ndarray, Path], Path]


def _samples(calibration: np.ndarray) -> list[np.ndarray]:
    return [calibration[i : i + 1] for i in range(len(calibration))]


def ort_dynamic(onnx_path: Path, calibration: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    target = out / "model.onnx"
    quantize_dynamic(str(onnx_path), str(target))
    return target


def ort_static(onnx_path: Path, calibration: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgevit.targets.onnxruntime import calibration_reader

    prepared, target = out / "prepared.onnx", out / "model.onnx"
    quant_pre_process(str(onnx_path), str(prepared))
    quantize_static(str(prepared), str(target), calibration_reader(_samples(calibration)))
    prepared.unlink()
    return target


def _nncf(onnx_path: Path, calibration: np.ndarray, out: Path, transformer: bool) -> Path:
    import nncf
    import openvino as ov

    from edgevit.targets.openvino import convert_onnx

    model = convert_onnx(onnx_path)
    samples = _samples(calibration)
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            subset_size=len(samples),
            **({"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}),
        )
    target = out / "model.xml"
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def nncf_default(onnx_path: Path, calibration: np.ndarray, out: Path) -> Path:
    return _nncf(onnx_path, calibration, out, transformer=False)


def nncf_transformer(onnx_path: Path, calibration: np.ndarray, out: Path) -> Path:
    return _nncf(onnx_path, calibration, out, transformer=True)


def _aieq(float_tflite: Path, calibration: np.ndarray, out: Path, recipe_name: str) -> Path:
    """ai-edge-quantizer at one of its own recipes (``recipe.<recipe_name>()``), calibrated on
    ``calibration`` where the recipe quantizes activations statically."""
    from ai_edge_quantizer import quantizer, recipe

    from edgevit.targets.tflite import interpreter_class

    q = quantizer.Quantizer(str(float_tflite))
    q.load_quantization_recipe(getattr(recipe, recipe_name)())
    target = out / "model.tflite"
    with contextlib.redirect_stderr(io.StringIO()):
        ranges = None
        if q.need_calibration:
            signatures = interpreter_class()(model_path=str(float_tflite)).get_signature_list()
            key = next(iter(signatures))
            name = signatures[key]["inputs"][0]
            ranges = q.calibrate({key: [{name: x} for x in _samples(calibration)]})
        q.quantize(ranges, enable_progress_report=False).export_model(str(target), overwrite=True)
    return target


def aieq_static(float_tflite: Path, calibration: np.ndarray, out: Path) -> Path:
    return _aieq(float_tflite, calibration, out, "static_wi8_ai8")


def aieq_dynamic(float_tflite: Path, calibration: np.ndarray, out: Path) -> Path:
    return _aieq(float_tflite, calibration, out, "dynamic_wi8_afp32")


def coremltools_w8a8(float_package: Path, calibration: np.ndarray, out: Path) -> Path:
    from edgevit.targets.base import INPUT_NAME
    from edgevit.targets.coreml_mil import MilReference, quiet
    from edgevit.targets.coreml_w8a8 import activation_ranges, calibrated_with

    with quiet():
        import coremltools as ct
        import coremltools.optimize.coreml as cto

        model = ct.models.MLModel(str(float_package), skip_model_load=True)
        stats = activation_ranges(MilReference(float_package), iter(_samples(calibration)))
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
        with calibrated_with(stats):
            model = cto.linear_quantize_activations(model, config, [{INPUT_NAME: calibration[:1]}])
        model = cto.linear_quantize_weights(model, config)
        target = out / "model.mlpackage"
        model.save(str(target))
    return target


# backend -> {peer name: (quantizer, what it starts from: "onnx", "tflite" or "mlpackage")}
PEERS: dict[str, dict[str, tuple[PeerFn, str]]] = {
    "onnxruntime": {"ort-dynamic": (ort_dynamic, "onnx"), "ort-static": (ort_static, "onnx")},
    "openvino": {"nncf-default": (nncf_default, "onnx"), "nncf-transformer": (nncf_transformer, "onnx")},
    "tflite": {"aieq-static": (aieq_static, "tflite"), "aieq-dynamic": (aieq_dynamic, "tflite")},
    "coreml": {"coremltools-w8a8": (coremltools_w8a8, "mlpackage")},
}
