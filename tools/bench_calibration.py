"""INT8 calibration and scope settings side by side, on the digits default and the harder shapes model.

For each model, one scratch build (the recipe's float export, calibration set and evaluation
set) and then, with the real targets, INT8 artifacts that differ in one setting only:

  onnxruntime  method minmax | percentile | entropy; 8-bit weights (reduce_range: false);
               + patch-embedding Conv; + attention MatMuls
  openvino     method minmax | percentile, SmoothQuant 0.5 (ours) / 0.95 (NNCF's transformer
               default) / off / 0.2, 0.35, 0.65, 0.8, 8-bit weights, and NNCF's transformer mode as
               a user calls it
  tflite       minmax (its only method), for reference

Each is scored on the evaluation set against the float model: top-1 drop, top-1 agreement and
logit SQNR. These are the measurements behind the quantize stage's defaults (README, Quantization
defaults). Prints a table, then one JSON line.

    .venv/bin/python tools/bench_calibration.py [--models digits,shapes] [--out DIR]
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

from edgevit.bench import figures, float_build, peers, score
from edgevit.models.load import load
from edgevit.paths import recipes_dir
from edgevit.recipe.schema import QuantizeStage
from edgevit.targets import TARGETS
from edgevit.targets.base import LowerRequest

RECIPES = {"digits": "digits-ort-int8.yaml", "shapes": "shapes-int8-budget.yaml"}
# (backend, label, quantize-stage settings); "options" are the target's options, "nncf_default"
# is NNCF's own range estimator. Weights are 7-bit on this host when it lacks VNNI (targets/cpu.py).
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("onnxruntime", "minmax (default)", {"method": "minmax"}),
    ("onnxruntime", "percentile", {"method": "percentile"}),
    ("onnxruntime", "entropy", {"method": "entropy"}),
    ("onnxruntime", "8-bit weights (reduce_range: false)", {"options": {"reduce_range": False}}),
    ("onnxruntime", "+ patch-embedding Conv", {"patch_embed": True}),
    ("onnxruntime", "+ patch embedding + attention MatMuls", {"patch_embed": True, "matmul_scope": "all"}),
    ("openvino", "minmax, SmoothQuant 0.5 (default)", {"method": "minmax"}),
    ("openvino", "percentile, SmoothQuant 0.5", {"method": "percentile"}),
    ("openvino", "minmax, SmoothQuant off", {"method": "minmax", "smooth_quant_alpha": -1}),
    ("openvino", "minmax, SmoothQuant 0.95 (NNCF's)", {"method": "minmax", "smooth_quant_alpha": 0.95}),
    *[
        ("openvino", f"minmax, SmoothQuant {alpha}", {"method": "minmax", "smooth_quant_alpha": alpha})
        for alpha in (0.2, 0.35, 0.65, 0.8)
    ],
    ("openvino", "minmax, 8-bit weights (reduce_range: false)", {"options": {"reduce_range": False}}),
    ("openvino", "NNCF transformer mode as is (its own ranges)", {"nncf_default": True}),
    ("tflite", "minmax (default)", {"method": "minmax"}),
]


def run(models: list[str], work: Path) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        directory = float_build(recipes_dir() / RECIPES[model], work, model)
        calibration = np.load(directory / "stages" / "quantize" / "calibration.npy")
        checkpoint = directory / "reference"
        config = load(checkpoint=checkpoint).config
        for i, (backend, label, settings) in enumerate(VARIANTS):
            target = TARGETS.get(backend)
            if not target.availability().available:
                continue
            stage = QuantizeStage(
                stage="quantize", **{k: v for k, v in settings.items() if k not in ("nncf_default", "options")}
            )
            out = work / model / "variants" / str(i)
            out.mkdir(parents=True, exist_ok=True)
            request = LowerRequest(
                directory / "export" / "model.onnx",
                "int8",
                config,
                settings.get("options", {}),
                stage,
                calibration,
                checkpoint=checkpoint,
            )
            t0 = time.perf_counter()
            if settings.get("nncf_default"):  # NNCF's own ranges: its transformer mode, as a user calls it
                artifact = peers.nncf_transformer(request.onnx_path, calibration, out)
            else:
                artifact = target.lower(request, out)
            seconds = time.perf_counter() - t0
            acc = score(backend, artifact, directory)
            rows.append(
                {
                    "model": model,
                    "backend": backend,
                    "setting": label,
                    **figures(acc),
                    "quantize_s": round(seconds, 1),
                }
            )
            print(
                f"{model:7s} {backend:12s} {label:36s} drop {acc.top1_drop:+5.2f}  agreement "
                f"{acc.agreement:.4f}  SQNR {acc.sqnr_db:5.1f} dB  ({seconds:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits,shapes")
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-calib-") as tmp:
        work = args.out or Path(tmp)
        rows = run(models, work)
    print("| model | backend | setting | top-1 drop | agreement | logit SQNR dB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['backend']} | {r['setting']} | {r['top1_drop']:+.2f} | "
            f"{r['agreement']:.4f} | {r['sqnr_db']:.1f} |"
        )
    print(json.dumps({"bench": "calibration", "rows": rows}))


if __name__ == "__main__":
    main()
