"""What LiteRT/TFLite's ``benchmark_model`` prints, read into the profiling agent's document.

The tool has printed two summaries over the years, both understood:

- ``Inference timings in us: Init: 3070, First inference: 8210, Warmup (avg): 7468.1, Inference
  (avg): 7455.45`` (TensorFlow 2.x, LiteRT);
- ``Average inference timings in us: Warmup: 7468.1, Init: 3070, no stats: 7455.45`` (older).

Its statistics lines, ``count=134 first=7434 curr=7385 min=7138 max=8102 avg=7455.45 std=176``,
gain ``p5=… median=… p95=…`` in builds that compute percentiles; the last such line is the timed
runs' (the one before it, the warm-up's). A percentile the tool did not print is reported as
absent (``None``, and named under ``absent``), never estimated. Also read: peak memory, the
delegate's coverage (``Replacing 10 out of 12 node(s) with delegate (TfLiteXNNPackDelegate)``) and
the model's initialization time.
"""

from __future__ import annotations

import re
from typing import Any

_STATS = re.compile(r"^\s*count=(\d+)((?:\s+\w+=[-+\d.eE]+)+)\s*$", re.M)
_FIELD = re.compile(r"(\w+)=([-+\d.eE]+)")
_NEW = re.compile(
    r"Inference timings in us:\s*Init:\s*([\d.]+),\s*First inference:\s*([\d.]+),\s*"
    r"Warmup \(avg\):\s*([\d.eE+-]+),\s*Inference \(avg\):\s*([\d.eE+-]+)"
)
_OLD = re.compile(
    r"Average inference timings in us:\s*Warmup:\s*([\d.eE+-]+),\s*Init:\s*([\d.]+),\s*"
    r"(?:no stats|Inference):\s*([\d.eE+-]+)"
)
_DELEGATE = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring:\s*([\d.]+)")
_DELTA = re.compile(
    r"Memory footprint delta from the start of the tool \(MB\):\s*init=([\d.]+)\s+overall=([\d.]+)"
)
_VERSION = re.compile(r"^(?:TF(?:Lite)? version|LiteRT version|Version):?\s*(\S+)", re.M)

PERCENTILES = ("p50", "p90", "p99")


class BenchmarkLogError(ValueError):
    """The output holds no timing summary: the tool did not finish a benchmark."""


def _ms(us: str | float | None) -> float | None:
    return None if us is None else round(float(us) / 1000.0, 6)


def parse(text: str) -> dict[str, Any]:
    """The timings (ms), delegation and memory ``benchmark_model`` printed in ``text``.

    Returns ``{"latency_ms": {...}, "init_ms", "first_inference_ms", "delegation", "peak_memory_mb",
    "summary_format"}``. Raises BenchmarkLogError when there is no summary line at all."""
    new, old = _NEW.search(text), _OLD.search(text)
    if new is None and old is None:
        raise BenchmarkLogError("no 'Inference timings in us' summary in benchmark_model's output")
    if new is not None:
        init, first, warmup, mean = new.group(1), new.group(2), new.group(3), new.group(4)
        fmt = "Inference timings in us"
    else:
        assert old is not None
        warmup, init, mean = old.group(1), old.group(2), old.group(3)
        first, fmt = None, "Average inference timings in us"
    stats = [dict(_FIELD.findall(m.group(0))) for m in _STATS.finditer(text)]
    timed = stats[-1] if stats else {}
    latency: dict[str, Any] = {
        "p50": _ms(timed.get("median")),
        "p90": None,
        "p99": None,
        "p5": _ms(timed.get("p5")),
        "p95": _ms(timed.get("p95")),
        "mean": _ms(timed.get("avg", mean)),
        "std": _ms(timed.get("std")),
        "min": _ms(timed.get("min")),
        "max": _ms(timed.get("max")),
        "runs": int(timed["count"]) if "count" in timed else None,
        "warmup_mean": _ms(warmup),
    }
    latency["absent"] = [k for k in (*PERCENTILES, "p5", "p95", "std") if latency[k] is None]
    out: dict[str, Any] = {
        "latency_ms": latency,
        "init_ms": _ms(init),
        "first_inference_ms": _ms(first),
        "summary_format": fmt,
        "delegation": [
            {"delegate": d, "nodes_delegated": int(n), "nodes_total": int(m)}
            for n, m, d in _DELEGATE.findall(text)
        ],
    }
    peak, delta = _PEAK.search(text), _DELTA.search(text)
    out["peak_memory_mb"] = float(peak.group(1)) if peak else None
    if delta:
        out["memory_delta_mb"] = {"init": float(delta.group(1)), "overall": float(delta.group(2))}
    version = _VERSION.search(text)
    if version:
        out["version"] = version.group(1)
    return out
