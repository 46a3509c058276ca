"""Latency of a Runner: warm-up, then timed single calls at a fixed batch."""

from __future__ import annotations

import time
from collections.abc import Mapping
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


def timeable(runner: Runner) -> None:
    """Raise ValueError when ``runner`` only simulates its backend: a simulation's run time (e.g. the
    MIL reference evaluator standing in for Core ML) is never a latency, anywhere it would be shown."""
    if runner.simulated:
        raise ValueError(
            f"{runner.artifact} runs under the {runner.simulated} simulation here: its run time is not a "
            "latency; measure it on the device (edgevit profile) instead"
        )


def _timed(runner: Runner, sample: np.ndarray, runs: int) -> np.ndarray:
    """Milliseconds of ``runs`` timed ``runner.infer(sample)`` calls."""
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        runner.infer(sample)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return times


def measure(runner: Runner, sample: np.ndarray, warmup: int, runs: int) -> LatencyResult:
    """Time ``runner.infer(sample)``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    timeable(runner)
    for _ in range(warmup):
        runner.infer(sample)
    times = _timed(runner, sample, runs)
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


@dataclass(frozen=True)
class InterleavedLatency:
    """One runner's figures from :func:`interleaved`, in milliseconds."""

    p50: float  # the median of the rounds' p50s: robust to a round that a drifting host slowed
    round_p50s: tuple[float, ...]
    pooled_p90: float  # over every timed call of every round


def interleaved(
    runners: Mapping[str, tuple[Runner, np.ndarray]], rounds: int, runs: int, warmup: int
) -> dict[str, InterleavedLatency]:
    """Time several open runners side by side: each round times ``runs`` calls of each in turn, so
    that a host drifting during the run (up to 2x here) slows them all alike. ``runners`` maps a
    name to an open runner and its sample batch; simulated runners are refused (see timeable)."""
    for runner, _ in runners.values():
        timeable(runner)
    for runner, sample in runners.values():
        for _ in range(warmup):
            runner.infer(sample)
    per_round: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (runner, sample) in runners.items():
            per_round[name].append(_timed(runner, sample, runs))
    out = {}
    for name, times in per_round.items():
        p50s = tuple(float(np.percentile(t, 50)) for t in times)
        out[name] = InterleavedLatency(
            float(np.median(p50s)), p50s, float(np.percentile(np.concatenate(times), 90))
        )
    return out
