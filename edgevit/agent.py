"""edgevit's profiling agent: one file (with ``scoring.py`` beside it for dense tasks' scores) that
runs an artifact where it will be deployed.

It needs only Python >= 3.8, NumPy and the artifact's runtime (onnxruntime, openvino,
ai-edge-litert / tflite-runtime, or TensorRT + cuda-python on an NVIDIA device). edgevit copies
this file to the device (or runs it locally), with the artifact and optionally an evaluation
bundle (.npz with ``inputs``, ``labels`` and ``reference_logits``; its inputs are read a batch at a
time, so a device scores more images than its memory holds; a dense task's maps and outputs too,
scored by edgevit/scoring.py), and reads the one JSON
document it prints:

    python3 agent.py ARTIFACT [--runs N | --duration S] [--warmup N] [--threads T] [--batch B]
                              [--bundle BUNDLE.npz] [--lock PATH] [--lock-timeout S]
                              [--runtime tensorrt [--plan build_engine.json] [--engine-cache DIR]]

Exit 0 with ``{"ok": true, ...}``; exit 2 with ``{"ok": false, "error": "..."}`` for bad input
(unknown artifact type, missing runtime, device busy). edgevit's own host runners use the same
session classes, so host and device numbers come from the same code.

Keep this file (and scoring.py) importable by Python 3.8 with only the standard library and NumPy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:  # scoring.py beside this file: in the package, or where a transport copied both
    from . import scoring
except ImportError:  # run as a script (on a device): its directory is on sys.path
    import scoring  # type: ignore[no-redef]

AGENT_VERSION = 1
INPUT_NAME = "input"
RUNTIME_OF_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "tflite"}
_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "sve")


class AgentError(Exception):
    """Bad input or an unusable device: reported as ``{"ok": false, "error": ...}``, exit 2."""


# ----------------------------------------------------------------------------- sessions


class Session:
    """One loaded artifact: ``session(batch)`` returns float32 logits for a float32 N x C x H x W batch."""

    runtime = ""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Facts about this load for the report (e.g. TensorRT's engine cache and layer precisions)."""
        return {}

    @staticmethod
    def versions() -> dict[str, str]:
        return {}


class OrtSession(Session):
    """ONNX Runtime, CPU execution provider.

    ``fake_quant`` runs a Q/DQ graph as written (quantize, dequantize, float op) instead of fusing
    it into ONNX Runtime's integer kernels: the exact INT8 arithmetic of a runtime that accumulates
    in int32 (TensorRT), free of the int16 saturation of x86 CPUs without VNNI.
    """

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, fake_quant: bool = False) -> None:
        ort = _import("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if fake_quant:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: batch})[0])

    @staticmethod
    def versions() -> dict[str, str]:
        return {"onnxruntime": str(_import("onnxruntime", "onnxruntime").__version__)}


class OpenVinoSession(Session):
    """OpenVINO CPU plugin, FP32 inference precision; each batch size compiled once, statically.

    A static shape measured ~2x faster at batch 1 than the dynamic-batch IR. Without the precision
    hint, CPUs with AVX512-BF16 silently run FP32 models in BF16: f32 keeps FP32 meaning FP32.
    """

    runtime = "openvino"

    def __init__(self, path: Path, threads: int) -> None:
        ov = _import("openvino", "openvino")
        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        self._threads = threads
        self._requests: dict[int, Any] = {}

    def _request_for(self, batch: np.ndarray) -> Any:
        n = int(batch.shape[0])
        if n not in self._requests:
            model = self._model.clone()
            model.reshape({model.inputs[0].any_name: list(batch.shape)})
            compiled = self._core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": self._threads,
                    "NUM_STREAMS": 1,
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "f32",
                },
            )
            self._requests[n] = compiled.create_infer_request()
        return self._requests[n]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = self._request_for(batch)
        request.infer({0: batch}, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, copy=True)

    @staticmethod
    def versions() -> dict[str, str]:
        return {"openvino": str(_import("openvino", "openvino").get_version())}


def interpreter_class() -> Any:
    """LiteRT's Interpreter from ai-edge-litert, else from tflite-runtime (the on-device package)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found,no-redef]

        return Interpreter
    except ImportError:
        pass
    raise AgentError(
        "no TFLite interpreter: neither ai-edge-litert nor tflite-runtime is importable; "
        "pip install ai-edge-litert (or tflite-runtime on the device)"
    )


def to_tensor(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Quantize a float input for a model with integer inputs (``full`` INT8); float passes through."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def from_tensor(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Dequantize an integer output; float passes through."""
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class TfliteSession(Session):
    """LiteRT interpreter (XNNPACK). The model has a fixed batch (1 from litert-torch); a larger
    batch runs one model-batch at a time, so latency at batch N is N invocations."""

    runtime = "tflite"

    def __init__(self, path: Path, threads: int) -> None:
        self._interp = interpreter_class()(model_path=str(path), num_threads=threads)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._batch = int(self._in["shape"][0])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(batch), self._batch):
            self._interp.set_tensor(self._in["index"], to_tensor(batch[i : i + self._batch], self._in))
            self._interp.invoke()
            outs.append(from_tensor(self._interp.get_tensor(self._out["index"]), self._out))
        return np.concatenate(outs)

    @staticmethod
    def versions() -> dict[str, str]:
        out = {}
        for module, dist in (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime")):
            try:
                __import__(module)
            except ImportError:
                continue
            out[module] = _dist_version(dist)
        return out


RUNTIMES = ("onnxruntime", "openvino", "tflite", "tensorrt")
SUFFIX_OF_RUNTIME = {"onnxruntime": ".onnx", "openvino": ".xml", "tflite": ".tflite", "tensorrt": ".onnx"}


def open_session(
    path: Path,
    threads: int,
    runtime: str | None = None,
    plan: Path | None = None,
    engine_cache: Path | None = None,
) -> Session:
    """The session for an artifact: ``runtime``, else the one its file type names (.onnx: ONNX Runtime)."""
    runtime = runtime or RUNTIME_OF_SUFFIX.get(path.suffix)
    if runtime is None:
        raise AgentError(
            f"{path.name}: unknown artifact type {path.suffix or '(none)'}; the agent runs "
            f"{', '.join(sorted(RUNTIME_OF_SUFFIX))} files"
        )
    if runtime not in RUNTIMES:
        raise AgentError(f"unknown runtime {runtime}; use one of: {', '.join(RUNTIMES)}")
    if path.suffix != SUFFIX_OF_RUNTIME[runtime]:
        raise AgentError(f"{path.name}: the {runtime} runtime runs {SUFFIX_OF_RUNTIME[runtime]} files")
    if not path.is_file():
        raise AgentError(f"{path} does not exist")
    if runtime == "tensorrt":
        return TrtSession(path, threads, plan, engine_cache)
    sessions: dict[str, Callable[[Path, int], Session]] = {
        "onnxruntime": OrtSession,
        "openvino": OpenVinoSession,
        "tflite": TfliteSession,
    }
    return sessions[runtime](path, threads)


def _import(module: str, dist: str = "", hint: str = "") -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        fix = hint or f"pip install {dist or module}"
        raise AgentError(f"runtime {module} is not installed on this device ({exc}); {fix}") from None


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "?"


# ----------------------------------------------------------------------------- TensorRT (device only)
#
# Runs only where TensorRT and an NVIDIA GPU are (a Jetson with JetPack): this host has neither, so
# edgevit's tests drive this code with stand-ins for the `tensorrt` and cuda-python modules.

PLAN_NAME = "build_engine.json"
# ONNX ops whose TensorRT layers a build plan may pin to FP32, by TensorRT layer type name.
_PINNABLE = {
    "LayerNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
    "ReduceMean": "REDUCE",
    "Pow": "ELEMENTWISE",
    "Sqrt": "UNARY",
}
_TRT_HINT = (
    "TensorRT comes with JetPack: use JetPack's python3 (python3-libnvinfer), "
    "or pip install tensorrt on an x86 machine with an NVIDIA GPU"
)


def engine_cache_key(onnx_bytes: bytes, plan: dict[str, Any], trt_version: str, gpu: str) -> str:
    """The engine cache key: the ONNX, the build plan, the TensorRT version and the GPU."""
    import hashlib

    h = hashlib.sha256(onnx_bytes)
    h.update(json.dumps(plan, sort_keys=True).encode())
    h.update(trt_version.encode() + b"\0" + gpu.encode())
    return h.hexdigest()


def build_engine(
    trt: Any, onnx_bytes: bytes, plan: dict[str, Any], timing_cache: bytes = b""
) -> tuple[bytes, bytes, list[str]]:
    """Build a serialized engine with TensorRT's Python API as ``plan`` says (edgevit's
    build_engine.json). Returns (engine, timing cache, names of layers pinned to FP32)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise AgentError(f"TensorRT's ONNX parser rejected the model: {'; '.join(errors[:3]) or 'no detail'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan["workspace_mib"]) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precision in the inspector
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.get("obey_precision_constraints"):
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    pin_ops = [op for op, p in plan.get("layer_precisions", {}).items() if p == "fp32" and op in _PINNABLE]
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(
            layer.type == getattr(trt.LayerType, _PINNABLE[op]) and _from_onnx_op(layer.name, op)
            for op in pin_ops
        ):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    profile = builder.create_optimization_profile()
    for name, dims in plan["optimization_profile"].items():
        profile.set_shape(name, dims["min"], dims["opt"], dims["max"])
    config.add_optimization_profile(profile)
    if plan.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise AgentError("TensorRT could not build an engine with this plan (see its log above)")
    return bytes(engine), bytes(config.get_timing_cache().serialize()), pinned


def _from_onnx_op(layer_name: str, op: str) -> bool:
    """Whether a parsed layer came from an ONNX node of type ``op``. onnx-tensorrt names layers after
    their ONNX node, and the exporter names nodes after their op (``/blocks.0/norm1/LayerNormalization``);
    a layer type shared by many ops (ELEMENTWISE, UNARY, REDUCE) is pinned only when its name says so."""
    return op in ("LayerNormalization", "Softmax") or op.lower() in layer_name.lower()


def layer_precisions(engine_info: dict[str, Any]) -> dict[str, Any]:
    """Per-layer precision TensorRT chose, from the engine inspector's JSON (DETAILED verbosity):
    the datatype of each layer's first input, normalised to int8/fp16/bf16/fp8/fp32."""
    layers = []
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict):
            continue  # names only: the engine was built without DETAILED verbosity
        tensors = layer.get("Inputs") or layer.get("Outputs") or [{}]
        fmt = str(tensors[0].get("Format/Datatype", "")) if isinstance(tensors[0], dict) else ""
        name, kind = layer.get("Name", "?"), layer.get("LayerType", "?")
        layers.append({"name": name, "type": kind, "precision": _precision(fmt)})
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return {"counts": counts, "layers": layers}


def _precision(fmt: str) -> str:
    text = fmt.lower()
    for token, name in (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"),
                        ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"), ("int64", "int64")):  # fmt: skip
        if token in text:
            return name
    return "unknown"


def _cudart() -> Any:
    """cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[import-not-found]

        return cudart
    except ImportError:
        pass
    raise AgentError(
        "the tensorrt runtime needs cuda-python to move tensors to and from the GPU; "
        "pip install cuda-python matching the device's CUDA (e.g. cuda-python==12.6.*)"
    )


def _cuda_call(cudart: Any, result: Any) -> Any:
    """cuda-python returns (error, *values): raise on an error, else the value(s)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise AgentError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def default_engine_cache() -> Path:
    """Where a device keeps built engines between profiles (they outlive the per-run directory)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgevit" / "engines"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(str(tmp), str(path))


class TrtSession(Session):
    """TensorRT on the device's GPU: the engine is built from the ONNX and its build plan, cached by
    (ONNX, plan, TensorRT version, GPU), and run on one CUDA stream. A call's time includes the
    host-to-device and device-to-host copies; batches larger than the plan's profile run in chunks."""

    runtime = "tensorrt"

    def __init__(
        self, path: Path, threads: int, plan_path: Path | None = None, cache_dir: Path | None = None
    ) -> None:
        trt = _import("tensorrt", hint=_TRT_HINT)
        cudart = _cudart()
        self._trt, self._cuda = trt, cudart
        plan_path = plan_path or path.with_name(PLAN_NAME)
        if not plan_path.is_file():
            raise AgentError(
                f"{path.name}: the tensorrt runtime needs the build plan {plan_path.name} next to the ONNX "
                "(edgevit writes it with the tensorrt target); pass --plan"
            )
        plan = json.loads(plan_path.read_text())
        onnx_bytes = path.read_bytes()
        props = _cuda_call(cudart, cudart.cudaGetDeviceProperties(0))
        name = props.name
        gpu = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).strip("\0 ")
        key = engine_cache_key(onnx_bytes, plan, str(trt.__version__), gpu)
        cache = cache_dir or default_engine_cache()
        cache.mkdir(parents=True, exist_ok=True)
        engine_file, meta_file = cache / f"{key}.engine", cache / f"{key}.json"
        timing_file = cache / f"{_slug(gpu)}-trt{trt.__version__}-{plan.get('timing_cache', 'timing.cache')}"
        if engine_file.is_file() and meta_file.is_file():
            engine_bytes = engine_file.read_bytes()
            meta = json.loads(meta_file.read_text())
            meta["engine"] = "cached"
        else:
            start = time.perf_counter()
            timing = timing_file.read_bytes() if timing_file.is_file() else b""
            engine_bytes, timing, pinned = build_engine(trt, onnx_bytes, plan, timing)
            meta = {"build_s": round(time.perf_counter() - start, 2), "pinned_fp32": pinned}
            _write_atomic(engine_file, engine_bytes)
            _write_atomic(timing_file, timing)
            _write_atomic(meta_file, json.dumps(meta).encode())
            meta["engine"] = "built"
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise AgentError(f"TensorRT could not load the cached engine {engine_file}; delete it and retry")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise AgentError(
                f"{path.name}: the engine has inputs {inputs} and outputs {outputs}; expected one each"
            )
        self._in, self._out = inputs[0], outputs[0]
        self._max_batch = int(self._engine.get_tensor_profile_shape(self._in, 0)[2][0])
        self._stream = _cuda_call(cudart, cudart.cudaStreamCreate())
        self._shape: tuple[int, ...] | None = None
        self._buffers: list[Any] = []
        inspector = self._engine.create_engine_inspector()
        chosen = layer_precisions(
            json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        )
        expected = str(plan.get("tensorrt_version", ""))
        self._info = {
            **meta,
            "engine_key": key[:16],
            "engine_bytes": len(engine_bytes),
            "gpu": gpu,
            "plan_tensorrt_version": expected,
            "version_matches_plan": str(trt.__version__).split(".")[0] == expected.split(".")[0],
            "layer_precisions": chosen,
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def _bind(self, shape: tuple[int, ...]) -> np.ndarray:
        """Device buffers for an input shape (reallocated when it changes); an empty host output."""
        cudart, trt = self._cuda, self._trt
        if shape != self._shape:
            self._free()
            self._context.set_input_shape(self._in, shape)
            out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self._out))
            out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out)))
            nbytes = [int(np.prod(shape)) * 4, int(np.prod(out_shape)) * out_dtype.itemsize]
            self._buffers = [_cuda_call(cudart, cudart.cudaMalloc(n)) for n in nbytes]
            self._context.set_tensor_address(self._in, int(self._buffers[0]))
            self._context.set_tensor_address(self._out, int(self._buffers[1]))
            self._shape, self._out_spec = shape, (out_shape, out_dtype)
        out_shape, out_dtype = self._out_spec
        return np.empty(out_shape, out_dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cuda
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = self._bind(tuple(int(d) for d in x.shape))
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(
            cudart, cudart.cudaMemcpyAsync(self._buffers[0], x.ctypes.data, x.nbytes, h2d, self._stream)
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise AgentError("TensorRT failed to run the engine (see its log above)")
        _cuda_call(
            cudart, cudart.cudaMemcpyAsync(y.ctypes.data, self._buffers[1], y.nbytes, d2h, self._stream)
        )
        _cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return y.astype(np.float32, copy=False)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        step = max(1, self._max_batch)
        return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)])

    def _free(self) -> None:
        for ptr in self._buffers:
            self._cuda.cudaFree(ptr)
        self._buffers = []

    def __del__(self) -> None:
        if getattr(self, "_buffers", None):
            self._free()

    @staticmethod
    def versions() -> dict[str, str]:
        return {
            "tensorrt": str(_import("tensorrt", hint=_TRT_HINT).__version__),
            "cuda-python": _dist_version("cuda-python"),
        }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-") or "gpu"


# ----------------------------------------------------------------------------- measurements


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Percentiles, mean and spread of per-call times in milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(t.mean()), 4),
        "std": round(float(t.std()), 4),
    }


def time_calls(
    call: Callable[[], Any], warmup: int, runs: int, duration_s: float | None = None
) -> list[float]:
    """``warmup`` untimed calls, then ``runs`` timed ones (or as many as fit in ``duration_s``)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = None if duration_s is None else time.perf_counter() + duration_s
    while (len(times) < runs) if deadline is None else (time.perf_counter() < deadline or not times):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def fidelity(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 (%) against labels; agreement, mean cosine and SQNR (dB) against reference logits."""
    if logits.shape != reference.shape:
        raise ValueError(f"logits {logits.shape} and reference {reference.shape} differ in shape")
    top1 = float(100.0 * np.mean(logits.argmax(1) == labels)) if len(labels) else 0.0
    ref_top1 = float(100.0 * np.mean(reference.argmax(1) == labels)) if len(labels) else 0.0
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    a, b = logits.astype(np.float64), reference.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))
    noise = float(np.sum((a - b) ** 2))
    sqnr = float("inf") if noise == 0 else float(10 * np.log10(np.sum(b**2) / noise))
    return {
        "top1": top1,
        "top1_drop": ref_top1 - top1,
        "agreement": agreement,
        "cosine": cosine,
        "sqnr_db": min(sqnr, 999.0),
        "samples": len(labels),
    }


def cpu_flags() -> list[str]:
    """The vector-ISA flags (of a fixed list) that /proc/cpuinfo reports; [] where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in _FLAGS_OF_INTEREST if f in flags]


def cpu_model() -> str:
    """The CPU model name (x86 'model name', Arm 'Model'/'Hardware'), or the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def device_facts() -> dict[str, Any]:
    """CPU, cores, OS; the CPU frequency governor and thermal zone temperatures where readable."""
    thermal = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        temp = _read(zone / "temp")
        if temp is not None and temp.lstrip("-").isdigit():
            thermal[_read(zone / "type") or zone.name] = int(temp) / 1000.0
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "governor": _read(Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")),
        "thermal_c": thermal,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process: Linux's VmHWM (the high-water mark of this program
    alone; ``ru_maxrss`` keeps the parent's across fork and exec, so an agent started by a large
    process would report that process's size), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    status = _read(Path("/proc/self/status"))
    for line in (status or "").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ----------------------------------------------------------------------------- the profile


class DeviceLock:
    """An exclusive lock file, so two profiles on one device do not overlap (waits, then fails)."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def __enter__(self) -> DeviceLock:
        import fcntl

        self._fd = os.open(str(self.path), os.O_CREAT | os.O_RDWR, 0o666)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    raise AgentError(
                        f"device busy: another profile holds {self.path} (waited {self.timeout_s:g} s); "
                        "retry when it finishes"
                    ) from None
                time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock


class BundleInputs:
    """An evaluation bundle's ``inputs`` (or another ``member``: a dense task's maps and reference
    outputs) read from its .npz a slice at a time, so that memory holds
    one batch rather than the set (a few thousand 224-px images are gigabytes): ``np.savez`` and
    edgevit's bundle writer store the members uncompressed, so the array lies contiguous in the file.
    Sliced like an array (``x[i:j]``); a compressed member falls back to being read whole."""

    def __init__(self, path: Path, member: str = "inputs") -> None:
        import struct
        import zipfile

        with zipfile.ZipFile(str(path)) as zf:
            try:
                info = zf.getinfo(f"{member}.npy")
            except KeyError:
                raise AgentError(f"evaluation bundle {path} has no {member}") from None
            whole = None if info.compress_type == zipfile.ZIP_STORED else np.load(zf.open(info))
        self._file = open(str(path), "rb")  # noqa: SIM115  (closed by close())
        self._whole = whole
        if whole is not None:
            self.shape, self.dtype, self._start, self._row = tuple(whole.shape), whole.dtype, 0, 0
            return
        self._file.seek(info.header_offset)
        local = self._file.read(30)
        if local[:4] != b"PK\x03\x04":
            raise AgentError(f"evaluation bundle {path} is not a readable .npz")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        self._file.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(self._file)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(self._file)
        if fortran:
            raise AgentError(f"evaluation bundle {path}: {member} are in Fortran order; re-make the bundle")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._start = self._file.tell()
        self._row = self.dtype.itemsize * int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._whole is not None:
            return np.asarray(self._whole[key])
        if isinstance(key, int):
            return self[key : key + 1][0] if key >= 0 else self[len(self) + key]
        if not isinstance(key, slice):
            raise TypeError("bundle inputs are read by slices: x[i:j]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("bundle inputs are read by contiguous slices (no step)")
        count = max(0, stop - start)
        buffer = bytearray(count * self._row)
        self._file.seek(self._start + start * self._row)
        if self._file.readinto(buffer) != len(buffer):
            raise AgentError("evaluation bundle is truncated: re-make it")
        return np.frombuffer(buffer, self.dtype).reshape(count, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def open_bundle(path: Path) -> tuple[BundleInputs, np.ndarray, np.ndarray]:
    """A bundle's inputs (read a slice at a time), labels and reference logits."""
    inputs = BundleInputs(path)
    with np.load(str(path)) as npz:
        return inputs, npz["labels"], npz["reference_logits"]


def open_scored_bundle(path: Path) -> tuple[BundleInputs, Any, Any]:
    """A bundle's inputs, labels and reference outputs; a dense task's maps and outputs (4-D) are
    read by slices like the inputs, a classifier's labels and logits are small and read whole."""
    reference = BundleInputs(path, "reference_logits")
    if len(reference.shape) == 4:
        return BundleInputs(path), BundleInputs(path, "labels"), reference
    reference.close()
    return open_bundle(path)


def dense_accuracy(batches: Any) -> dict[str, Any]:
    """Dense outputs (NCHW, or NHWC) scored against maps and float outputs (edgevit.scoring), from
    (outputs, maps, reference outputs) batches."""
    tally = None
    for outputs, labels, reference in batches:
        reference = np.asarray(reference)
        tally = tally or scoring.tally_for(reference)
        tally.add(
            scoring.normalise(np.asarray(outputs, np.float32), reference.shape), np.asarray(labels), reference
        )
    if tally is None:
        raise AgentError("no dense outputs to score")
    return scoring.rounded(tally.result())


def profile(
    artifact: Path,
    runs: int = 100,
    warmup: int = 10,
    threads: int = 1,
    batch: int = 1,
    bundle: Path | None = None,
    duration_s: float | None = None,
    runtime: str | None = None,
    plan: Path | None = None,
    engine_cache: Path | None = None,
) -> dict[str, Any]:
    """Load ``artifact``, time it, check it on ``bundle``; the agent's JSON document."""
    session = open_session(artifact, threads, runtime, plan, engine_cache)
    shape = None
    data: dict[str, Any] | None = None
    if bundle is not None:
        if not bundle.is_file():
            raise AgentError(f"evaluation bundle {bundle} does not exist")
        inputs, labels, reference = open_scored_bundle(bundle)
        data = {"inputs": inputs, "labels": labels, "reference_logits": reference}
        shape = inputs.shape[1:]
    sample = (
        np.ascontiguousarray(data["inputs"][:batch], dtype=np.float32)
        if data is not None
        else np.zeros((batch, *_input_shape(session, artifact)), np.float32)
    )
    if shape is None:
        shape = sample.shape[1:]
    times = time_calls(lambda: session(sample), warmup, runs, duration_s)
    stats = summarize(times)
    doc: dict[str, Any] = {
        "ok": True,
        "agent_version": AGENT_VERSION,
        "artifact": artifact.name,
        "runtime": session.runtime,
        "versions": session.versions(),
        "latency_ms": {
            **stats,
            "runs": len(times),
            "warmup": warmup,
            "batch": batch,
            "threads": threads,
        },
        "throughput_ips": round(1000.0 * batch / stats["mean"], 2) if stats["mean"] > 0 else None,
        "input_shape": list(shape),
        "device": device_facts(),
    }
    if session.info():
        doc["session"] = session.info()
    if data is not None and len(data["reference_logits"].shape) == 4:
        doc["accuracy"] = _dense_accuracy(session, data)
    elif data is not None:
        x = data["inputs"]  # read 16 images at a time: a device's memory holds a batch, not the set
        logits = np.concatenate(
            [session(np.ascontiguousarray(x[i : i + 16], dtype=np.float32)) for i in range(0, len(x), 16)]
        ).astype(np.float32)
        doc["accuracy"] = {
            k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in fidelity(logits, data["labels"], data["reference_logits"]).items()
        }
    doc["peak_rss_mb"] = peak_rss_mb()
    return doc


def _dense_accuracy(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """A dense artifact's scores on the bundle, 16 images at a time."""
    x, labels, reference = data["inputs"], data["labels"], data["reference_logits"]
    return dense_accuracy(
        (
            session(np.ascontiguousarray(x[i : i + 16], dtype=np.float32)),
            labels[i : i + 16],
            reference[i : i + 16],
        )
        for i in range(0, len(x), 16)
    )


def _input_shape(session: Session, artifact: Path) -> list[int]:
    """The model's C x H x W when no bundle gives it (read from the artifact's declared input)."""
    if isinstance(session, OrtSession):
        dims = session._session.get_inputs()[0].shape[1:]
    elif isinstance(session, OpenVinoSession):
        dims = [d.get_length() for d in list(session._model.inputs[0].get_partial_shape())[1:]]
    elif isinstance(session, TfliteSession):
        dims = [int(d) for d in session._in["shape"][1:]]
    elif isinstance(session, TrtSession):
        dims = [int(d) for d in session._engine.get_tensor_profile_shape(session._in, 0)[1][1:]]
    else:
        dims = []
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise AgentError(f"{artifact.name}: input shape {dims} is not static; pass --bundle with inputs")
    return [int(d) for d in dims]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.py", description="edgevit profiling agent")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of timed runs (instead of --runs)"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default=None, help="default: by file type (.onnx: onnxruntime)"
    )
    parser.add_argument(
        "--plan", type=Path, default=None, help=f"tensorrt: build plan (default: {PLAN_NAME} beside)"
    )
    parser.add_argument("--engine-cache", type=Path, default=None, help="tensorrt: engine cache directory")
    parser.add_argument("--lock", type=Path, default=Path("/tmp/edgevit-agent.lock"))
    parser.add_argument("--lock-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        with DeviceLock(args.lock, args.lock_timeout):
            doc = profile(
                args.artifact,
                args.runs,
                args.warmup,
                args.threads,
                args.batch,
                args.bundle,
                args.duration,
                args.runtime,
                args.plan,
                args.engine_cache,
            )
    except AgentError as exc:
        print(json.dumps({"ok": False, "error": str(exc), "agent_version": AGENT_VERSION}))
        return 2
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
