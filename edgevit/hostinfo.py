"""Facts about the machine that measured a number: CPU model, cores, vector ISA."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "sve")


def cpu_flags() -> list[str]:
    """The vector-ISA flags (of a fixed list) that /proc/cpuinfo reports; [] where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in _FLAGS_OF_INTEREST if f in flags]


def cpu_model() -> str:
    """The CPU model name, or the machine architecture when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_facts() -> dict[str, Any]:
    """Host description stored in reports next to every host-measured number."""
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
    }
