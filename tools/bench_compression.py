"""Prune + distill on the digits default, side by side in one run: accuracy, size and INT8 latency.

Builds four variants of the embedded default with the real pipeline (recipe digits-pruned-int8
and variants of it) into one scratch directory:

  unpruned       the float reference, ONNX Runtime INT8
  prune-only     pruned to the recipe's MAC budget, no distillation
  pruned+kd      pruned, then distilled from the reference (1 process)
  pruned+kd x2   the same distillation in 2 processes (torchrun + DDP)

then times the ONNX Runtime INT8 artifacts in interleaved rounds (so drift on a shared machine
hits all alike). Prints a table, then one JSON line.

    .venv/bin/python tools/bench_compression.py [--rounds 10] [--runs 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgevit.check.latency import interleaved
from edgevit.hostinfo import host_facts
from edgevit.paths import recipes_dir
from edgevit.pipeline import build
from edgevit.recipe.loader import load_recipe
from edgevit.report.document import Report
from edgevit.targets import TARGETS, Runner

VARIANTS = ("unpruned", "prune-only", "pruned+kd", "pruned+kd x2")


def _recipe(variant: str, work: Path) -> Path:
    """The recipe file of one variant, derived from recipes/digits-pruned-int8.yaml."""
    doc = yaml.safe_load((recipes_dir() / "digits-pruned-int8.yaml").read_text())
    doc["name"] = f"bench-{variant.replace('+', '-').replace(' ', '-')}"
    doc["targets"] = [{"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"}]
    doc["check"] = {"runs": 20, "warmup": 5}
    doc["gates"] = {"max_top1_drop": None, "max_compression_top1_drop": None}
    stages = doc["stages"]
    if variant == "unpruned":
        doc["stages"] = [s for s in stages if s["stage"] == "quantize"]
    elif variant == "prune-only":
        doc["stages"] = [s for s in stages if s["stage"] != "distill"]
    elif variant == "pruned+kd x2":
        next(s for s in stages if s["stage"] == "distill")["nproc"] = 2
    path = work / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _interleaved_p50(reports: dict[str, Report], rounds: int, runs: int, threads: int) -> dict[str, float]:
    """Median of round p50s of batch-1 calls per artifact, alternating artifacts per round."""
    target = TARGETS.get("onnxruntime")
    runners: dict[str, tuple[Runner, np.ndarray]] = {}
    for name, report in reports.items():
        entry = report.target("ort-int8")
        sample = np.load(report.directory / "eval" / "bundle.npz")["inputs"][:1]
        runner = target.runner(report.directory / entry["artifact"], threads, sample.shape[1:])
        runners[name] = (runner.__enter__(), sample)
    try:
        return {name: lat.p50 for name, lat in interleaved(runners, rounds, runs, warmup=20).items()}
    finally:
        for runner, _ in runners.values():
            runner.__exit__(None, None, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="keep the builds here (default: a temporary directory)")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_compression_") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        reports: dict[str, Report] = {}
        seconds: dict[str, float] = {}
        for variant in VARIANTS:
            print(f"building {variant}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            reports[variant] = build(load_recipe(_recipe(variant, work)), work / variant, log=log)
            seconds[variant] = time.perf_counter() - t0
        p50 = _interleaved_p50(reports, args.rounds, args.runs, args.threads)

    ref = reports["unpruned"].data["reference"]
    rows: dict[str, dict[str, Any]] = {}
    for variant, report in reports.items():
        stage = (report.data["stages"] or [ref])[-1]
        int8 = report.target("ort-int8")["accuracy"]
        rows[variant] = {
            "params": stage["params"],
            "macs": stage["macs"],
            "macs_ratio": round(stage["macs"] / ref["macs"], 4),
            "float_top1": stage["top1"],
            "float_drop_vs_unpruned": round(ref["top1"] - stage["top1"], 4),
            "int8_top1": int8["top1"],
            "int8_drop_vs_own_float": int8["top1_drop"],
            "int8_p50_ms": round(p50[variant], 4),
            "int8_p50_ratio_vs_unpruned": round(p50[variant] / p50["unpruned"], 4),
            "build_s": round(seconds[variant], 1),
        }

    header = (
        f"{'variant':<14} {'params':>8} {'MACs':>8} {'xMACs':>6} {'float top1':>10} {'drop':>6} "
        f"{'INT8 top1':>9} {'drop':>6} {'INT8 p50 ms':>11} {'x p50':>6} {'build s':>8}"
    )
    print(header)
    print("-" * len(header))
    for variant, r in rows.items():
        print(
            f"{variant:<14} {r['params'] / 1e6:>7.2f}M {r['macs'] / 1e6:>7.1f}M {r['macs_ratio']:>6.3f} "
            f"{r['float_top1']:>10.2f} {r['float_drop_vs_unpruned']:>+6.2f} {r['int8_top1']:>9.2f} "
            f"{r['int8_drop_vs_own_float']:>+6.2f} {r['int8_p50_ms']:>11.3f} {r['int8_p50_ratio_vs_unpruned']:>6.3f} "
            f"{r['build_s']:>8.1f}"
        )
    host = host_facts()
    print(
        f"\nONNX Runtime INT8, batch 1, {args.threads} threads, {args.rounds} interleaved rounds x {args.runs} runs; "
        f"{host.get('cpu')} ({', '.join(host.get('cpu_flags') or [])}); top-1 on {ref['samples']} digits test images"
    )
    kd, po, kd2 = rows["pruned+kd"], rows["prune-only"], rows["pruned+kd x2"]
    figures = {
        "bench": "compression",
        "variants": rows,
        "kd_gain_over_prune_only_points": round(kd["float_top1"] - po["float_top1"], 4),
        "two_vs_one_process_top1_points": round(kd2["float_top1"] - kd["float_top1"], 4),
        "pruned_int8_p50_ratio": kd["int8_p50_ratio_vs_unpruned"],
        "host": {k: host.get(k) for k in ("cpu", "cores", "cpu_flags")},
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
