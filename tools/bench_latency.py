"""FP32 vs INT8 latency of ViT-Plus-base at 224 on every available backend, side by side.

Random weights (latency does not depend on them); calibration on random inputs. Uses the same
Target.lower and Runner code as `edgevit build`. Prints a table, then one JSON line.

    .venv/bin/python tools/bench_latency.py [--model vit_plus_base_patch16_224] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgevit.check.latency import measure
from edgevit.hostinfo import host_facts
from edgevit.models.load import config_for, create, save
from edgevit.recipe.schema import QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets import TARGETS, LowerRequest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_plus_base_patch16_224")
    parser.add_argument("--ms-scales", default="1,2,4", help="multi-scale attention factors ('1' = off)")
    parser.add_argument("--runs", type=int, default=30)
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
    sample = calib[:1]
    rows, figures = [], {}
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
            avail = target.availability()
            if not avail.available:
                rows.append((backend, "-", "-", "-", f"skipped: {avail.reason}"))
                continue
            p50 = {}
            for precision in ("fp32", "int8"):
                out = work / f"{backend}-{precision}"
                out.mkdir()
                q = QuantizeStage(stage="quantize") if precision == "int8" else None
                t0 = time.perf_counter()
                request = LowerRequest(onnx_path, precision, cfg, {}, q, calib, checkpoint=checkpoint)
                artifact = target.lower(request, out)
                lower_s = time.perf_counter() - t0
                with target.runner(artifact, args.threads, cfg.input_size) as runner:
                    lat = measure(runner, sample, args.warmup, args.runs)
                p50[precision] = lat.p50
                size = sum(p.stat().st_size for p in out.iterdir())
                figures[f"{backend}_{precision}_p50_ms"] = round(lat.p50, 2)
                figures[f"{backend}_{precision}_p90_ms"] = round(lat.p90, 2)
                figures[f"{backend}_{precision}_size_mb"] = round(size / 1e6, 1)
                print(
                    f"{backend} {precision}: p50 {lat.p50:.1f} ms (lowered in {lower_s:.0f} s)",
                    file=sys.stderr,
                )
            ratio = p50["int8"] / p50["fp32"]
            figures[f"{backend}_int8_over_fp32"] = round(ratio, 3)
            rows.append((backend, f"{p50['fp32']:.1f}", f"{p50['int8']:.1f}", f"{ratio:.3f}", ""))

    host = host_facts()
    print(
        f"\n{args.model} (ms_scales={scales}), batch 1, {args.threads} threads, {args.runs} runs, "
        f"{host['cpu']} [{', '.join(host['cpu_flags'])}]"
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
                "runs": args.runs,
                "host": host,
                **figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
