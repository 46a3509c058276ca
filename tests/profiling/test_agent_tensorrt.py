"""The agent's TensorRT engine build, against a stand-in for the `tensorrt` module.

TensorRT needs an NVIDIA GPU: this host has none, so a recording stand-in plays the API and the
test checks what edgevit asks of it (flags, FP32 pins, profile, timing cache, errors). On a
device the same code drives the real module.
"""

from __future__ import annotations

import types

import pytest

from edgevit import agent

PLAN = {
    "flags": ["FP16", "INT8"],
    "obey_precision_constraints": True,
    "layer_precisions": {"LayerNormalization": "fp32", "Softmax": "fp32", "Pow": "fp32"},
    "workspace_mib": 256,
    "optimization_profile": {"input": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [1, 3, 32, 32]}},
    "dla_core": None,
}


class Layer:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.type, self.num_outputs = name, kind, 1
        self.precision = None
        self.output_types: dict[int, object] = {}

    def set_output_type(self, index: int, dtype: object) -> None:
        self.output_types[index] = dtype


def stand_in(parse_ok: bool = True, build_ok: bool = True) -> types.SimpleNamespace:
    calls: list[tuple] = []
    layers = [Layer("ln", "NORMALIZATION"), Layer("mm", "MATRIX_MULTIPLY"), Layer("sm", "SOFTMAX")]

    class Network:
        num_layers = len(layers)

        def get_layer(self, i: int) -> Layer:
            return layers[i]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: object, logger: object) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i: int) -> str:
            return "In node 3 (STFT): No importer registered for op: STFT"

    class Cache:
        def serialize(self) -> bytes:
            return b"timing"

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls.append(("pool", pool, size))

        def set_flag(self, flag: str) -> None:
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile: object) -> None:
            calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data: bytes) -> Cache:
            calls.append(("timing_cache_in", data))
            return Cache()

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
            pass

        def get_timing_cache(self) -> Cache:
            return Cache()

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: list, opt: list, hi: list) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: object, config: object) -> bytes | None:
            return b"engine" if build_ok else None

    logger = types.SimpleNamespace(WARNING="warning")
    return types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": "warning", "__init__": lambda self, level: None}),
        Builder=Builder,
        OnnxParser=Parser,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(
            FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY", GPU_FALLBACK="GPU_FALLBACK"
        ),
        LayerType=types.SimpleNamespace(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX"),
        DeviceType=types.SimpleNamespace(DLA="DLA"),
        float32="float32",
        calls=calls,
        layers=layers,
        logger=logger,
    )


def test_build_applies_the_plan() -> None:
    trt = stand_in()
    engine, cache, pinned = agent.build_engine(trt, b"onnx-bytes", PLAN, b"old-cache")
    assert engine == b"engine" and cache == b"timing" and pinned == ["ln", "sm"]
    assert ("flag", "FP16") in trt.calls and ("flag", "INT8") in trt.calls and ("flag", "OBEY") in trt.calls
    assert ("pool", "workspace", 256 << 20) in trt.calls and ("timing_cache_in", b"old-cache") in trt.calls
    assert ("profile", {"input": ([1, 3, 32, 32],) * 3}) in trt.calls
    ln, mm, sm = trt.layers
    assert ln.precision == "float32" and sm.output_types == {0: "float32"} and mm.precision is None


def test_parser_and_builder_failures_are_agent_errors() -> None:
    with pytest.raises(agent.AgentError, match="No importer registered for op: STFT"):
        agent.build_engine(stand_in(parse_ok=False), b"x", PLAN)
    with pytest.raises(agent.AgentError, match="could not build an engine"):
        agent.build_engine(stand_in(build_ok=False), b"x", PLAN)


def test_engine_cache_key_changes_with_each_input() -> None:
    base = agent.engine_cache_key(b"onnx", PLAN, "10.3", "Orin")
    assert base == agent.engine_cache_key(b"onnx", dict(PLAN), "10.3", "Orin")
    assert len({
        base,
        agent.engine_cache_key(b"onnx2", PLAN, "10.3", "Orin"),
        agent.engine_cache_key(b"onnx", {**PLAN, "flags": ["FP16"]}, "10.3", "Orin"),
        agent.engine_cache_key(b"onnx", PLAN, "10.7", "Orin"),
        agent.engine_cache_key(b"onnx", PLAN, "10.3", "A100"),
    }) == 5  # fmt: skip
