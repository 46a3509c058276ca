"""Where training computes: the torch device and the precision, chosen once per process.

``--device auto`` (the default) trains on a GPU when torch sees one and on the CPU otherwise;
under torchrun each process takes the GPU of its ``LOCAL_RANK``. On a GPU mixed precision is on
by default: bf16 autocast where the GPU supports it, else fp16 autocast with a gradient scaler;
the CPU trains in fp32. Checkpoints are written from CPU tensors, so they load on either.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from edgevit.errors import EdgeVitError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Compute:
    """A training process's device and precision."""

    device: torch.device
    precision: Precision

    @property
    def cuda(self) -> bool:
        """True on a GPU."""
        return self.device.type == "cuda"

    @property
    def distributed_backend(self) -> str:
        """The torch.distributed backend for this device: NCCL moves CUDA tensors only, gloo CPU ones."""
        return "nccl" if self.cuda else "gloo"

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward pass's mixed-precision context (none in fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def describe(self) -> dict[str, Any]:
        """The device and precision for logs (``train.json`` …)."""
        facts: dict[str, Any] = {"device": str(self.device), "precision": self.precision}
        if self.cuda:
            facts["gpu"] = torch.cuda.get_device_name(self.device)
        return facts


def resolve(device: str = "auto", precision: str = "auto") -> Compute:
    """The :class:`Compute` for ``--device`` (auto | cpu | cuda | cuda:N) and ``--precision``
    (auto | fp32 | bf16 | fp16)."""
    if precision not in PRECISIONS:
        raise EdgeVitError(
            f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}", "pick one of them"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise EdgeVitError(f"--device {device!r} is not auto, cpu, cuda or cuda:N", "pick one of them")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgeVitError(
                f"--device {device}: torch sees no CUDA GPU on this machine", "use --device cpu (or auto)"
            )
        index = int(os.environ.get("LOCAL_RANK", "0")) if device == "cuda" else _index(device)
        if index >= torch.cuda.device_count():
            raise EdgeVitError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)",
                "pick an index below that, or cuda to let torchrun's LOCAL_RANK choose",
            )
        chosen = torch.device("cuda", index)
    else:
        chosen = torch.device("cpu")
    return Compute(chosen, _precision(chosen, precision))


def _index(device: str) -> int:
    try:
        return int(device.split(":", 1)[1])
    except ValueError:
        raise EdgeVitError(
            f"--device {device!r}: the GPU index is not a number", "write cuda:0, cuda:1 …"
        ) from None


def _precision(device: torch.device, asked: str) -> Precision:
    if device.type == "cpu":
        if asked in ("bf16", "fp16"):
            raise EdgeVitError(
                f"--precision {asked} trains with autocast on a GPU; this run is on the CPU",
                "use --precision fp32 (or auto) on the CPU",
            )
        return "fp32"
    if asked == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if asked == "bf16" and not torch.cuda.is_bf16_supported():
        raise EdgeVitError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16", "use fp16")
    return asked  # type: ignore[return-value]


def peak_memory(compute: Compute) -> dict[str, float]:
    """Peak resident memory of this process (its VmHWM: this program's alone; a forked loader
    worker's own figure would start from this process's size, so none is given), and on a GPU the
    peak memory torch allocated there, in MiB."""
    from edgevit.agent import peak_rss_mb

    facts = {"peak_rss_mb": peak_rss_mb()}
    if compute.cuda:
        facts["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(compute.device) / 2**20, 1)
    return facts
