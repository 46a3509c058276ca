"""Device/target profiles (targets/*.yaml): runtime, precisions, threads, how to reach the device."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgevit.errors import RecipeError
from edgevit.paths import targets_dir

HOST = "host"


class CoreMLSettings(BaseModel):
    """How a Core ML build is made and run on an Apple device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = Field(
        default="iOS17", description="oldest OS the .mlpackage must load on (a mode may need a newer one)"
    )
    compute_units: Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"] = Field(
        default="ALL", description="where Core ML may run the model (set when the model is loaded)"
    )


class TensorRTSettings(BaseModel):
    """What the device's TensorRT is expected to be, and how the build plan uses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(default="10.3", description="TensorRT on the device (JetPack 6.1/6.2 ship 10.3)")
    dla_core: int | None = Field(
        default=None, ge=0, description="DLA core to build for (GPU fallback on); null: the GPU only"
    )
    workspace_mib: int = Field(default=1024, gt=0, description="builder workspace limit")


class AndroidSettings(BaseModel):
    """How an Android phone (``transport: adb``) runs LiteRT's ``benchmark_model``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serial: str | None = Field(default=None, description="adb serial; null: the one device adb sees")
    benchmark_model: str | None = Field(
        default=None,
        description="path on this machine of benchmark_model for the phone's ABI (EDGEVIT_BENCHMARK_MODEL "
        "overrides); not on PyPI or in Debian: see README, Android phones",
    )
    delegate: Literal["xnnpack", "gpu", "nnapi", "none"] = Field(
        default="xnnpack", description="benchmark_model's delegate: --use_xnnpack, --use_gpu, --use_nnapi"
    )
    cpu_mask: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]+$", description="taskset mask (hex), e.g. f0 for the big cores"
    )
    op_profiling: bool = Field(default=False, description="--enable_op_profiling (per-op times in the log)")
    accuracy_samples: int = Field(
        default=200, ge=0, description="bundle images run on the phone for accuracy (one invocation each)"
    )
    extra_flags: list[str] = Field(default_factory=list, description="more benchmark_model flags, as written")
    lock_timeout_s: float = Field(default=600.0, ge=0, description="wait this long for another profile")


class DeviceProfile(BaseModel):
    """Where a target runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    # none: edgevit cannot reach the device (e.g. an iPhone); accuracy is checked on the host
    transport: Literal["local", "ssh", "adb", "none"] = "local"
    address: str | None = Field(default=None, description="ssh://user@host[:port] for ssh")
    python: str = Field(default="python3", description="the Python that runs the profiling agent there")
    ssh_options: list[str] = Field(default_factory=list, description="extra ssh/scp options, e.g. -i KEY")
    runtimes: list[str] = Field(default_factory=list)
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=list)
    threads: int | None = Field(default=None, gt=0)
    cpu_flags: list[str] | None = Field(
        default=None,
        description="the device CPU's vector features as the profiling agent names them (avx2, "
        "avx512_vnni, avx_vnni, amx_int8, asimd, ...): they decide INT8 weight ranges for ONNX Runtime "
        "and OpenVINO. A local device is this host and uses its own; null on a remote one: unknown",
    )
    coreml: CoreMLSettings | None = None
    tensorrt: TensorRTSettings | None = None
    android: AndroidSettings | None = None
    notes: str = ""


def profile_names() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


@lru_cache(maxsize=64)
def resolve_device(name: str | None) -> DeviceProfile:
    """The profile named ``name`` (``None``/``host``: this machine, local)."""
    if name is None or name == HOST:
        return DeviceProfile(name=HOST, description="the machine running edgevit")
    path = targets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(
            f"device profile {name!r} not found ({path})",
            f"use one of: {', '.join([HOST, *profile_names()])}",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return DeviceProfile.model_validate({"name": name, **raw})
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise RecipeError(
            f"device profile {path} is invalid: {' '.join(first[:3])}", "fix the file"
        ) from None
