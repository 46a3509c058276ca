"""FP32 vs INT8 latency of ViT-Plus-base at 224 on every backend this host can time, side by side.

Random weights (latency does not depend on them); calibration on random inputs. Uses the same
Target.lower and Runner code as `edgevit build`. Each backend's FP32 and INT8 artifacts are timed
in interleaved rounds (this machine drifts by up to 2x between runs, so both precisions meet the
same drift) and each figure is the median of the rounds' p50s. A backend that cannot be timed
here is listed with the reason: not installed, or only simulated on this host (Core ML on Linux,
TensorRT without its GPU) — a simulation's run time is never a latency. Prints a table, then one
JSON line.

    .venv/bin/python tools/bench_latency.py [--model vit_plus_base_patch16_224] [--rounds 5] [--runs 10]
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
import torch

from edgevit.check.latency import interleaved
from edgevit.hostinfo import host_facts
from edgevit.models.config import ModelConfig
from edgevit.models.load import config_for, create, save
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets import TARGETS, LowerRequest, Target

PRECISIONS = ("fp32", "int8")


def untimeable(target: Target) -> str | None:
    """Why ``target`` cannot be timed on this host, or None when it can."""
    avail = target.availability()
    if not avail.available:
        return f"skipped: {avail.reason}"
    missing = [p for p in PRECISIONS if p not in target.precisions]
    simulated = target.runner_type(None).simulated
    if simulated:
        return (
            f"not measured: only simulated on this host ({simulated}); time it on its device "
            "with `edgevit profile`"
        )
    if missing:
        return f"skipped: builds no {'/'.join(missing)}"
    return None


def time_backend(
    target: Target,
    work: Path,
    onnx_path: Path,
    checkpoint: Path,
    cfg: ModelConfig,
    calib: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Lower FP32 and INT8 for one backend, then time both in interleaved rounds."""
    artifacts, lowered_s = {}, {}
    for precision in PRECISIONS:
        out = work / f"{target.name}-{precision}"
        out.mkdir()
        q = QuantizeStage(stage="quantize") if precision == "int8" else None
        t0 = time.perf_counter()
        request = LowerRequest(onnx_path, precision, cfg, {}, q, calib, checkpoint=checkpoint)
        artifacts[precision] = target.lower(request, out)
        lowered_s[precision] = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(
            f"{target.name} {precision}: lowered in {lowered_s[precision]:.0f} s", file=sys.stderr, flush=True
        )
        lowered_s[f"{precision}_size_mb"] = round(size / 1e6, 1)
    sample = calib[:1]
    runners = {p: target.runner(a, args.threads, cfg.input_size) for p, a in artifacts.items()}
    for runner in runners.values():
        runner.__enter__()
    try:
        lat = interleaved({p: (r, sample) for p, r in runners.items()}, args.rounds, args.runs, args.warmup)
    finally:
        for runner in runners.values():
            runner.__exit__(None, None, None)
    return {"latency": lat, "sizes": {p: lowered_s[f"{p}_size_mb"] for p in PRECISIONS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_plus_base_patch16_224")
    parser.add_argument("--ms-scales", default="1,2,4", help="multi-scale attention factors ('1' = off)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (FP32, INT8, FP32, ...)")
    parser.add_argument("--runs", type=int, default=10, help="timed batch-1 calls per artifact per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=16, help="random calibration samples")
    parser.add_argument("--backends", default=",".join(TARGETS.names()))
    args = parser.parse_args()

    torch.manual_seed(0)
    scales = tuple(int(s) for s in args.ms_scales.split(","))
    model = create(args.model, ms_scales=scales).eval()
    cfg = config_for(args.model, model, model_kwargs={"ms_scales": scales})
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((args.calibration, *cfg.input_size)).astype(np.float32)
    rows: list[tuple[str, str, str, str, str]] = []
    figures: dict[str, Any] = {}
    not_timed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        onnx_path = export_onnx(model, cfg.input_size, work / "model.onnx")
        checkpoint = work / "checkpoint"  # for backends that convert from torch (tflite)
        save(model, cfg, checkpoint)
        print(
            f"exported {args.model} ms_scales={scales} in {time.perf_counter() - t0:.0f} s", file=sys.stderr
        )
        for backend in args.backends.split(","):
            target = TARGETS.get(backend)
            reason = untimeable(target)
            if reason is None:
                try:
                    timed = time_backend(target, work, onnx_path, checkpoint, cfg, calib, args)
                except Exception as exc:  # one backend failing must not cost the others their row
                    reason = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if reason is not None:
                print(f"{backend}: {reason}", file=sys.stderr, flush=True)
                not_timed[backend] = reason
                rows.append((backend, "-", "-", "-", reason))
                continue
            lat = timed["latency"]
            for precision in PRECISIONS:
                figures[f"{backend}_{precision}_p50_ms"] = round(lat[precision].p50, 2)
                figures[f"{backend}_{precision}_p90_ms"] = round(lat[precision].pooled_p90, 2)
                figures[f"{backend}_{precision}_round_p50s_ms"] = [
                    round(v, 2) for v in lat[precision].round_p50s
                ]
                figures[f"{backend}_{precision}_size_mb"] = timed["sizes"][precision]
            ratio = lat["int8"].p50 / lat["fp32"].p50
            figures[f"{backend}_int8_over_fp32"] = round(ratio, 3)
            rows.append((backend, f"{lat['fp32'].p50:.1f}", f"{lat['int8'].p50:.1f}", f"{ratio:.3f}", ""))

    host = host_facts()
    print(
        f"\n{args.model} (ms_scales={scales}), batch 1, {args.threads} threads, {args.rounds} interleaved "
        f"rounds x {args.runs} runs, median of round p50s; {host['cpu']} [{', '.join(host['cpu_flags'])}]"
    )
    print(f"{'backend':<12} {'FP32 p50 ms':>12} {'INT8 p50 ms':>12} {'INT8/FP32':>10}")
    for backend, fp32, int8, ratio, note in rows:
        print(f"{backend:<12} {fp32:>12} {int8:>12} {ratio:>10}  {note}")
    print(
        json.dumps(
            {
                "benchmark": "latency",
                "model": args.model,
                "ms_scales": list(scales),
                "threads": args.threads,
                "rounds": args.rounds,
                "runs": args.runs,
                "statistic": "median of round p50s",
                "host": host,
                "not_timed": not_timed,
                **figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
