"""The accuracy-budget search with the simulated ranking against the per-build one, side by side.

For each case, the same recipe is built twice into fresh directories, once with
``accuracy_budget.ranking: simulated`` (the INT8 simulator switches one layer back to float at a
time; no builds) and once with ``measured`` (one build of the target per quantized layer), for one
ONNX Runtime INT8 target. Reported per run: the ranking's wall time (as the search logs it), the
float layers the search kept, whether the budget was met, the final logit SQNR and top-1 drop on
the evaluation set, and the whole build's time.

Cases:
  shapes       shapes-int8-budget (ViT-Plus-tiny/4 at 32 px, 4 blocks) with a budget tightened
               until fallback is needed (--shapes-sqnr, default 40 dB; top-1 drop 0.5)
  vitplus224   ViT-Plus-tiny/16 at 224 px (12 blocks, 49 quantized layers), random weights (timing
               only), shapes images at 224 px, an unreachable budget (rank, then try one layer)

Prints a table, then one JSON line.

    .venv/bin/python tools/bench_budget.py [--cases shapes,vitplus224] [--out DIR]
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

RANKINGS = ("simulated", "measured")
TARGET = {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"}


def _case(name: str, shapes_sqnr: float) -> dict[str, Any]:
    if name == "shapes":
        doc = yaml.safe_load((recipes_dir() / "shapes-int8-budget.yaml").read_text())
        budget = {"max_top1_drop": 0.5, "min_sqnr_db": shapes_sqnr, "max_float_layers": 12}
    elif name == "vitplus224":
        doc = {
            "model": {"name": "vit_plus_tiny_patch16_224", "num_classes": 10},
            "data": {
                "calibration": {"source": "shapes", "split": "train", "count": 64},
                "evaluation": {"source": "shapes", "split": "test", "count": 64},
            },
        }
        budget = {"min_sqnr_db": 500, "max_float_layers": 1}
    else:
        raise SystemExit(f"--cases: unknown case {name}; use shapes, vitplus224")
    doc.update(
        {
            "name": f"bench-budget-{name}",
            "stages": [{"stage": "quantize", "accuracy_budget": budget}],
            "targets": [TARGET],
            "check": {"runs": 3, "warmup": 1},
            "gates": {"max_top1_drop": None},
        }
    )
    return doc


def run(cases: list[str], work: Path, shapes_sqnr: float) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        doc = _case(case, shapes_sqnr)
        for ranking in RANKINGS:
            doc["stages"][0]["accuracy_budget"]["ranking"] = ranking
            path = work / f"{case}-{ranking}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            t0 = time.perf_counter()
            report = build(path, work / f"{case}-{ranking}")
            seconds = time.perf_counter() - t0
            target = report.target(TARGET["name"])
            f = target.get("fallback") or {}
            acc = target.get("accuracy") or {}
            row = {
                "case": case,
                "ranking": f.get("ranking", ranking),
                "ranking_s": f.get("ranking_seconds"),
                "float_layers": len(f.get("float_layers", [])),
                "met": f.get("met"),
                "candidates_built": len(f.get("tried", [])),
                "sqnr_db": acc.get("sqnr_db"),
                "top1_drop": acc.get("top1_drop"),
                "build_s": round(seconds, 1),
                "most_sensitive": [x["layer"] for x in f.get("sensitivity", [])[:3]],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="shapes,vitplus224")
    parser.add_argument("--shapes-sqnr", type=float, default=40.0, help="the shapes case's min_sqnr_db")
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-budget-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(cases, work, args.shapes_sqnr)
    print(
        "| case | ranking | ranking s | float layers | budget met | candidates built | SQNR dB | top-1 drop | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['ranking']} | {r['ranking_s']} | {r['float_layers']} | {r['met']} | "
            f"{r['candidates_built']} | {r['sqnr_db']} | {r['top1_drop']} | {r['build_s']} |"
        )
    ratios = {}
    for case in cases:
        by = {r["ranking"]: r for r in rows if r["case"] == case}
        if by.get("simulated", {}).get("ranking_s") and by.get("measured", {}).get("ranking_s"):
            ratios[case] = round(by["simulated"]["ranking_s"] / by["measured"]["ranking_s"], 3)
    host = host_facts()
    print(json.dumps({"bench": "budget", "rows": rows, "ranking_time_ratio": ratios, "host": host}))


if __name__ == "__main__":
    main()
