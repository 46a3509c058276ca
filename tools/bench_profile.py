"""Profiling transports side by side: the same artifacts through `local` and a device URL.

Rounds alternate between the transports (this VM's timings drift), each round profiling every
agent-runnable artifact of a build. With an ssh:// URL to 127.0.0.1 it measures what the SSH
transport adds or changes (nothing, if the agent's timings are transport-independent). Prints a
table, then one JSON line.

    .venv/bin/python tools/bench_profile.py BUILD_DIR --device ssh://user@host[:port][?python=PATH]
        [--rounds 5] [--runs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgevit.profiling import profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="a build directory (e.g. build/digits-ort-int8)")
    parser.add_argument("--device", required=True, help="the device to compare with local")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    p50s: dict[tuple[str, str], list[float]] = {}
    wall: dict[str, float] = {"local": 0.0, args.device: 0.0}
    shapes = set()
    for _ in range(args.rounds):
        for device in ("local", args.device):
            start = time.perf_counter()
            result = profile(args.build, device, runs=args.runs, threads=args.threads, warmup=20)
            wall[device] += time.perf_counter() - start
            for r in result.results:
                p50s.setdefault((r["target"], device), []).append(r["latency_ms"]["p50"])
                shapes.add(json.dumps(sorted(r.keys())))
    targets = sorted({t for t, _ in p50s})
    print(
        f"{args.rounds} alternating rounds x {args.runs} runs, {args.threads} thread(s); median of round p50s"
    )
    print(f"{'target':<14} {'local p50 ms':>13} {'device p50 ms':>14} {'device/local':>13}")
    rows = {}
    for t in targets:
        local, dev = float(np.median(p50s[(t, "local")])), float(np.median(p50s[(t, args.device)]))
        rows[t] = {
            "local_p50_ms": round(local, 4),
            "device_p50_ms": round(dev, 4),
            "ratio": round(dev / local, 3),
        }
        print(f"{t:<14} {local:>13.3f} {dev:>14.3f} {dev / local:>13.3f}")
    per_round = {d: round(w / args.rounds, 2) for d, w in wall.items()}
    print(f"wall time per round: local {per_round['local']} s, device {per_round[args.device]} s")
    print(
        json.dumps(
            {
                "device": args.device.split("?")[0],
                "rounds": args.rounds,
                "runs": args.runs,
                "targets": rows,
                "same_result_keys": len(shapes) == 1,
                "wall_s_per_round": {"local": per_round["local"], "device": per_round[args.device]},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
