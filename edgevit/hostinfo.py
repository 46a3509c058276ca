"""Facts about the machine that measured a number: CPU model, cores, vector ISA."""

from __future__ import annotations

import os
import platform
from typing import Any

from edgevit.agent import cpu_flags, cpu_model  # the agent reports the same facts on devices


def host_facts() -> dict[str, Any]:
    """Host description stored in reports next to every host-measured number."""
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
    }
