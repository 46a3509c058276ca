"""An Android phone's facts, read in one adb shell: properties (getprop), each CPU's frequency and
governor, thermal zones and battery temperature. ``FACTS`` is the shell command, ``STATE`` the part
of it that changes during a run (temperatures), read again afterwards."""

from __future__ import annotations

import re
from typing import Any

STATE = (
    "echo @thermal; for z in /sys/class/thermal/thermal_zone*; do "
    'echo "$(cat $z/type 2>/dev/null) $(cat $z/temp 2>/dev/null)"; done; '
    "echo @battery; dumpsys battery 2>/dev/null | grep -i temperature; echo @end"
)
FACTS = (
    "echo @props; getprop; "
    "echo @cpus; for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    'echo "${c##*/} $(cat $c/cpufreq/scaling_cur_freq 2>/dev/null) $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null)'
    ' $(cat $c/cpufreq/scaling_governor 2>/dev/null)"; done; ' + STATE
)
_PROPS = {
    "model": "ro.product.model",
    "manufacturer": "ro.product.manufacturer",
    "soc": "ro.soc.model",
    "platform": "ro.board.platform",
    "android": "ro.build.version.release",
    "sdk": "ro.build.version.sdk",
    "abi": "ro.product.cpu.abi",
    "abilist": "ro.product.cpu.abilist",
}


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@") and line[1:].isalpha():
            current = line[1:]
            out[current] = []
        elif current is not None and line.strip():
            out[current].append(line.strip())
    return out


def device_facts(text: str) -> dict[str, Any]:
    """The facts ``FACTS`` (or ``STATE``) printed: properties, per-CPU frequencies and governor, thermal zones
    (°C), battery temperature (°C)."""
    parts = _sections(text)
    props = dict(re.findall(r"^\[([^\]]+)\]:\s*\[([^\]]*)\]", "\n".join(parts.get("props", [])), re.M))
    facts: dict[str, Any] = {k: props.get(p) for k, p in _PROPS.items()}
    facts["system"] = "Android"
    cpus = {}
    for line in parts.get("cpus", []):
        name, *rest = line.split()
        cur, top, gov = [*rest, None, None, None][:3]
        cpus[name] = {
            "cur_mhz": int(cur) // 1000 if cur and cur.isdigit() else None,
            "max_mhz": int(top) // 1000 if top and top.isdigit() else None,
            "governor": gov,
        }
    facts["cpus"] = cpus
    facts["governor"] = next((c["governor"] for c in cpus.values() if c["governor"]), None)
    facts["cores"] = len(cpus) or None
    facts["thermal_c"] = _thermal(parts.get("thermal", []))
    battery = re.search(r"temperature:\s*(-?\d+)", " ".join(parts.get("battery", [])))
    facts["battery_c"] = int(battery.group(1)) / 10.0 if battery else None
    return facts


def _thermal(lines: list[str]) -> dict[str, float]:
    out = {}
    for line in lines:
        bits = line.rsplit(None, 1)
        if len(bits) == 2 and bits[1].lstrip("-").isdigit():
            value = int(bits[1])
            out[bits[0]] = value / 1000.0 if abs(value) > 1000 else float(value)
    return out


def temperatures(text: str) -> dict[str, Any]:
    """Thermal zones and battery temperature from what ``STATE`` printed."""
    facts = device_facts(text)
    return {"thermal_c": facts["thermal_c"], "battery_c": facts["battery_c"]}
