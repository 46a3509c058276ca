"""Stand-in for cuda-python's ``cuda.bindings.runtime`` over host memory (see ../../README.md)."""

from __future__ import annotations

import ctypes
import enum
import types

MEMORY: dict[int, bytearray] = {}
CALLS: list[str] = []
_next = [1 << 40]


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def cudaGetDeviceProperties(device: int) -> tuple:
    return cudaError_t.cudaSuccess, types.SimpleNamespace(name=b"Stand-in GPU (ONNX Runtime on CPU)\0\0")


def cudaMalloc(size: int) -> tuple:
    ptr = _next[0]
    _next[0] += max(size, 1) + 256
    MEMORY[ptr] = bytearray(size)
    CALLS.append(f"malloc {size}")
    return cudaError_t.cudaSuccess, ptr


def cudaFree(ptr: int) -> tuple:
    MEMORY.pop(int(ptr), None)
    CALLS.append("free")
    return (cudaError_t.cudaSuccess,)


def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: int) -> tuple:
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        MEMORY[int(dst)][:count] = ctypes.string_at(int(src), count)
    else:
        ctypes.memmove(int(dst), bytes(MEMORY[int(src)][:count]), count)
    return (cudaError_t.cudaSuccess,)


def cudaStreamCreate() -> tuple:
    return cudaError_t.cudaSuccess, 7


def cudaStreamSynchronize(stream: int) -> tuple:
    return (cudaError_t.cudaSuccess,)
