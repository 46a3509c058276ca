"""Stand-in for TensorRT 10's Python API, computing with ONNX Runtime (see ../README.md).

Only what edgevit's agent calls. The serialized "engine" is a JSON header (flags, pinned layers,
optimisation profile) plus the ONNX; running it runs the ONNX with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import enum
import json
import os
import types
from typing import Any

import numpy as np
from cuda.bindings import runtime as _cuda

__version__ = "10.3.0"
MAGIC = b"STANDIN-TRT-ENGINE\n"
BUILDS: list[dict[str, Any]] = []  # one entry per build_serialized_network, for the tests

float32 = "float32"
LayerType = types.SimpleNamespace(
    NORMALIZATION="NORMALIZATION",
    SOFTMAX="SOFTMAX",
    REDUCE="REDUCE",
    ELEMENTWISE="ELEMENTWISE",
    UNARY="UNARY",
    MATRIX_MULTIPLY="MATRIX_MULTIPLY",
    CONVOLUTION="CONVOLUTION",
    OTHER="OTHER",
)
_TYPE_OF_OP = {
    "LayerNormalization": "NORMALIZATION",
    "Softmax": "SOFTMAX",
    "ReduceMean": "REDUCE",
    "Add": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Pow": "ELEMENTWISE",
    "Sqrt": "UNARY",
    "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "Conv": "CONVOLUTION",
}
UNSUPPORTED = {"STFT"}  # ops this stand-in's parser rejects, like TensorRT's would
BuilderFlag = types.SimpleNamespace(
    FP16="FP16", INT8="INT8", BF16="BF16", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS",
    GPU_FALLBACK="GPU_FALLBACK",
)  # fmt: skip
MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED", LAYER_NAMES_ONLY="LAYER_NAMES_ONLY")
DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0


def nptype(dtype: DataType) -> type:
    return np.float32


class Logger:
    WARNING = 2

    def __init__(self, level: int = 2) -> None:
        self.level = level


class Layer:
    def __init__(self, name: str, op: str, quantized: bool = False) -> None:
        self.name, self.op, self.type = name, op, _TYPE_OF_OP.get(op, "OTHER")
        self.quantized = quantized  # fed by a DequantizeLinear: TensorRT would run it in INT8
        self.num_outputs = 1
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class Network:
    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.onnx = b""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network, self.errors = network, []

    def parse(self, data: bytes) -> bool:
        import onnx

        model = onnx.load_from_string(data)
        self.errors = [f"In node {n.name} ({n.op_type}): No importer registered for op: {n.op_type}"
                       for n in model.graph.node if n.op_type in UNSUPPORTED]  # fmt: skip
        self.network.onnx = data
        dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        self.network.layers = [
            Layer(n.name, n.op_type, any(i in dq for i in n.input)) for n in model.graph.node
        ]
        return not self.errors

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class BuilderConfig:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.profiles: list[Profile] = []
        self.profiling_verbosity = "LAYER_NAMES_ONLY"
        self.default_device_type = "GPU"
        self.DLA_core = -1
        self.timing: TimingCache | None = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(bytes(data))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        assert self.timing is not None
        return self.timing


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        if os.environ.get("STANDIN_TRT_BUILD_FAILS"):
            return None
        header = {
            "flags": config.flags,
            "pools": config.pools,
            "profile": config.profiles[0].shapes,
            "verbosity": config.profiling_verbosity,
            "device": config.default_device_type,
            "dla_core": config.DLA_core,
            "timing_cache_in": config.timing.data.decode(errors="replace") if config.timing else None,
            "layers": [
                {
                    "name": lay.name,
                    "op": lay.op,
                    "type": lay.type,
                    "fp32": lay.precision == float32,
                    "quantized": lay.quantized,
                }
                for lay in network.layers
            ],
        }
        BUILDS.append(header)
        return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx


class Runtime:
    def __init__(self, logger: Logger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        if not data.startswith(MAGIC):
            return None
        header, onnx_bytes = data[len(MAGIC) :].split(b"\n", 1)
        return Engine(json.loads(header), onnx_bytes)


class Engine:
    def __init__(self, header: dict[str, Any], onnx_bytes: bytes) -> None:
        import onnxruntime as ort

        self.header = header
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.names = [self.session.get_inputs()[0].name, self.session.get_outputs()[0].name]

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
        return self.header["profile"][name]

    def create_execution_context(self) -> ExecutionContext:
        return ExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)


class ExecutionContext:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shape: tuple[int, ...] = ()
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            raise ValueError(f"shape {shape} outside the optimisation profile {lo}..{hi}")
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        dims = self.engine.session.get_outputs()[0].shape
        return (self.shape[0], *[int(d) for d in dims[1:]])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        inp, out = self.engine.names
        n = int(np.prod(self.shape)) * 4
        x = np.frombuffer(bytes(_cuda.MEMORY[self.addresses[inp]][:n]), np.float32).reshape(self.shape)
        y = np.ascontiguousarray(self.engine.session.run(None, {inp: x})[0], dtype=np.float32)
        _cuda.MEMORY[self.addresses[out]][: y.nbytes] = y.tobytes()
        return True


class EngineInspector:
    """Reports the precision the build flags and pins imply (a stand-in cannot know TensorRT's choice)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get_engine_information(self, fmt: str) -> str:
        header = self.engine.header
        if header["verbosity"] != "DETAILED":
            return json.dumps({"Layers": [lay["name"] for lay in header["layers"]]})
        int8 = "INT8" in header["flags"]
        layers = []
        for lay in header["layers"]:
            if lay["op"] in ("QuantizeLinear", "DequantizeLinear"):
                continue  # TensorRT fuses Q/DQ into the layers around them
            if lay["fp32"]:
                fmt_ = "Row major linear FP32"
            elif int8 and lay["quantized"]:
                fmt_ = "Row major linear Int8"
            elif "FP16" in header["flags"]:
                fmt_ = "Row major linear FP16 format"
            else:
                fmt_ = "Float"
            layers.append(
                {"Name": lay["name"], "LayerType": lay["type"], "Inputs": [{"Format/Datatype": fmt_}]}
            )
        return json.dumps({"Layers": layers, "Bindings": self.engine.names})
