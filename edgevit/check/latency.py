"""Latency of a Runner: warm-up, then timed single calls at a fixed batch."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from edgevit.targets.base import Runner


@dataclass(frozen=True)
class LatencyResult:
    """Percentiles in milliseconds over ``runs`` timed calls."""

    p50: float
    p90: float
    p99: float
    mean: float
    runs: int
    warmup: int
    batch: int
    threads: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready, milliseconds rounded to microseconds."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure(runner: Runner, sample: np.ndarray, warmup: int, runs: int) -> LatencyResult:
    """Time ``runner.infer(sample)``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    for _ in range(warmup):
        runner.infer(sample)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        runner.infer(sample)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return LatencyResult(
        float(p50),
        float(p90),
        float(p99),
        float(times.mean()),
        runs,
        warmup,
        int(sample.shape[0]),
        runner.threads,
    )
