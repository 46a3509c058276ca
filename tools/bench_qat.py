"""Quantization-aware distillation against post-training INT8, side by side, per backend.

For each model (``shapes``: the builtin shapes model; ``shapes-outliers``: its function-preserving
outlier variant), the recipe ``recipes/shapes-widest-qad.yaml`` (every INT8 backend, the widest
scope: attention matmuls and patch embedding) is built twice into one scratch directory tree: as
written (equalize, then one qat run per INT8 grid, then each backend's own INT8) and with the qat
stage removed (post-training INT8). The two builds share the float reference, the export and the
equalization steps. Reported per target: logit SQNR and top-1 drop against the original float
reference, for both; for the QAD build also the SQNR against the float model QAD produced, the
simulated SQNR before and after the stage, and its time and images/s.

Prints a table, then one JSON line.

    .venv/bin/python tools/bench_qat.py [--models shapes,shapes-outliers] [--set stages.0.epochs=2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from edgevit.hostinfo import host_facts
from edgevit.paths import recipes_dir
from edgevit.pipeline import build
from edgevit.recipe.loader import load_recipe

RECIPE = "shapes-widest-qad.yaml"


def _recipe(model: str, qat: bool, work: Path) -> Path:
    doc = yaml.safe_load((recipes_dir() / RECIPE).read_text())
    doc["model"] = {"checkpoint": f"builtin:{model}"}
    doc["name"] = f"bench-qat-{model}-{'qad' if qat else 'ptq'}"
    if not qat:
        doc["stages"] = [s for s in doc["stages"] if s["stage"] != "qat"]
    path = work / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="shapes,shapes-outliers")
    p.add_argument("--set", action="append", default=[], help="recipe override for the QAD build")
    p.add_argument("--out", help="scratch directory (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-qat-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for model in args.models.split(","):
        reports = {}
        for qat in (False, True):
            recipe = load_recipe(str(_recipe(model, qat, work)), args.set if qat else [])
            t0 = time.perf_counter()
            log = (lambda line: print(f"  {line}", file=sys.stderr, flush=True)) if qat else None
            reports[qat] = (build(recipe, work / "build" / model, log=log).data, time.perf_counter() - t0)
        (ptq, _), (qad, qad_s) = reports[False], reports[True]
        for before, after in zip(ptq["targets"], qad["targets"], strict=True):
            if before["status"] != "ok" or after["status"] != "ok":
                rows.append({"model": model, "target": before["name"], "status": after["status"]})
                continue
            record = after.get("qat", {})
            sim = record.get("simulated_sqnr_db", {})
            rows.append(
                {
                    "model": model,
                    "target": before["name"],
                    "where": after["where"],
                    "ptq_sqnr_db": round(before["accuracy"]["sqnr_db"], 2),
                    "ptq_top1_drop": before["accuracy"]["top1_drop"],
                    "qad_sqnr_db": round(after["accuracy"]["sqnr_db"], 2),
                    "qad_top1_drop": after["accuracy"]["top1_drop"],
                    "gain_db": round(after["accuracy"]["sqnr_db"] - before["accuracy"]["sqnr_db"], 2),
                    "qad_vs_qad_float_sqnr_db": round(
                        after["accuracy"].get("vs_qat_float", {}).get("sqnr_db", 0), 2
                    ),
                    "qad_float_top1": record.get("float_top1"),
                    "simulated_before_db": sim.get("before"),
                    "simulated_after_db": sim.get("after"),
                    "qat_seconds": record.get("seconds_this_run"),
                    "images_per_second": record.get("images_per_second"),
                    "float_layers": len(after.get("fallback", {}).get("float_layers", []) or []),
                }
            )
        print(f"{model}: both builds in {qad_s:.0f} s (QAD build)", file=sys.stderr)
    print(
        "| model | target | where | PTQ: drop / SQNR dB | QAD: drop / SQNR dB | gain dB | QAD vs its float dB | "
        "simulated before → after dB | QAD s (img/s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "ptq_sqnr_db" not in r:
            print(f"| {r['model']} | {r['target']} | {r['status']} | | | | | | |")
            continue
        print(
            f"| {r['model']} | {r['target']} | {r['where']} | {r['ptq_top1_drop']:+.2f} / {r['ptq_sqnr_db']} | "
            f"{r['qad_top1_drop']:+.2f} / {r['qad_sqnr_db']} | {r['gain_db']:+.2f} | {r['qad_vs_qad_float_sqnr_db']} | "
            f"{r['simulated_before_db']} → {r['simulated_after_db']} | {r['qat_seconds']} ({r['images_per_second']}) |"
        )
    print(
        json.dumps(
            {
                "bench": "qat",
                "seconds": round(time.perf_counter() - started),
                "host": host_facts(),
                "rows": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
