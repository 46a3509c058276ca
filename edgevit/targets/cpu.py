"""INT8 weight range for CPU runtimes (ONNX Runtime, OpenVINO) on x86 CPUs without VNNI.

Without VNNI, x86 INT8 GEMM kernels multiply unsigned 8-bit activations by signed 8-bit weights
with VPMADDUBSW, which adds pairs of products in int16 and saturates: with full-range 8-bit weights
a ViT's large activations overflow. 7-bit weights (ONNX Runtime's ``reduce_range``, NNCF's
``overflow_fix``) cannot overflow. VNNI (AVX-512 VNNI, AVX-VNNI, AMX) accumulates in int32, so
there 8-bit weights are kept, being more precise; ONNX Runtime documents the saturation for x86
only, so Arm CPUs keep them too.

Measured on this project's AVX2 host (tools/bench_calibration.py; logit SQNR against float, the
Linear layers INT8, the other settings at their defaults):

======================  ===============  ================
model                   8-bit weights    7-bit weights
======================  ===============  ================
digits, ONNX Runtime    31.0 dB          37.2 dB
shapes, ONNX Runtime    29.6 dB          34.4 dB
digits, OpenVINO        29.5 dB          44.2 dB
shapes, OpenVINO        28.6 dB          42.7 dB
======================  ===============  ================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgevit.devices import DeviceProfile
from edgevit.targets.base import LowerRequest

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


class CpuInt8Options(BaseModel):
    """``targets[].options`` shared by the CPU INT8 backends (onnxruntime, openvino)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reduce_range: bool | None = Field(
        default=None,
        description="int8: quantize weights to 7 bits so x86 CPUs without VNNI cannot saturate "
        "(ONNX Runtime reduce_range, NNCF overflow_fix). null (auto): on for an x86 CPU without "
        "AVX-512 VNNI/AVX-VNNI/AMX, or an unknown remote CPU; off where the CPU accumulates in int32",
    )


def saturates(flags: Sequence[str]) -> bool:
    """True for an x86 CPU (it has AVX2) whose INT8 dot products go through int16 (no VNNI)."""
    return "avx2" in flags and not any(f in flags for f in VNNI_FLAGS)


def device_flags(device: DeviceProfile | None) -> list[str] | None:
    """The CPU flags of where a target runs: this host's for a local device, the profile's
    ``cpu_flags`` for a remote one (None: unknown)."""
    if device is None or device.transport == "local":
        from edgevit.agent import cpu_flags

        return cpu_flags()
    return device.cpu_flags


def reduce_range(choice: bool | None, device: DeviceProfile | None) -> bool:
    """Whether INT8 weights get 7 bits: ``choice`` when set, else by the device's CPU (see module)."""
    if choice is not None:
        return choice
    flags = device_flags(device)
    return True if flags is None else saturates(flags)


def int16_pairs(request: LowerRequest) -> bool:
    """Whether the CPU that runs ``request``'s artifact adds INT8 products in saturating int16
    pairs (x86 without VNNI; assumed where its flags are unknown, as for the weight range): the
    arithmetic the INT8 simulator then models (``Int8Scheme.int16_pairs``)."""
    flags = device_flags(request.device)
    return True if flags is None else saturates(flags)


def seven_bit_weights(request: LowerRequest, schema: type[CpuInt8Options] = CpuInt8Options) -> bool:
    """Whether a CPU backend builds ``request`` with 7-bit INT8 weights (its options validated by
    the backend's ``schema``): what its ``lower`` does and its ``build_settings`` report."""
    return reduce_range(schema.model_validate(request.options).reduce_range, request.device)


def weight_bits(request: LowerRequest, schema: type[CpuInt8Options] = CpuInt8Options) -> dict[str, Any]:
    """A CPU backend's ``Target.build_settings`` for an INT8 request (nothing for a float one):
    ``int8_weight_bits`` (7 or 8) and ``int8_pair_sums``, how the kernels of the CPU that runs it
    add products ("int16, saturating" without VNNI on x86, else "int32")."""
    if request.precision != "int8":
        return {}
    return {
        "int8_weight_bits": 7 if seven_bit_weights(request, schema) else 8,
        "int8_pair_sums": "int16, saturating" if int16_pairs(request) else "int32",
    }
