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
defaults).

``--rows equalization``: on each model and its function-preserving outlier variant
(``edgevit.bench.outlier_build``), every INT8 backend at the recipe defaults with ``equalize: off``
and ``auto`` (OpenVINO also with NNCF's SmoothQuant off on top), each artifact's logit SQNR beside
the INT8 simulator's (``edgevit.quant``) for the same grid and model. Prints a table, then one
JSON line.

    .venv/bin/python tools/bench_calibration.py [--models digits,shapes] [--rows calibration,equalization]
        [--out DIR]
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

from edgevit.bench import OUTLIERS, edgevit_int8, figures, float_build, outlier_build, peers, score
from edgevit.check.layerwise import sqnr_db
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
                stage="quantize",
                **{k: v for k, v in settings.items() if k not in ("nncf_default", "options")},
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


# (backend, target options, quantize-stage settings beyond equalize, label)
EQUALIZED: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("onnxruntime", {}, {}, "onnxruntime"),
    ("openvino", {}, {}, "openvino (NNCF SmoothQuant 0.5)"),
    ("openvino", {}, {"smooth_quant_alpha": -1}, "openvino (NNCF SmoothQuant off)"),
    ("tflite", {}, {}, "tflite"),
    ("tensorrt", {}, {}, "tensorrt (simulated)"),
    ("coreml", {"mode": "w8a8"}, {}, "coreml w8a8 (simulated)"),
]


def run_equalization(
    models: list[str], work: Path, backends: list[str] | None = None
) -> list[dict[str, Any]]:
    """The equalization rows (see the module): artifact and simulator per backend, off and auto."""
    from edgevit.quant.simulate import simulate

    rows = []
    for base in models:
        for model in (base, base + OUTLIERS):
            recipe = recipes_dir() / RECIPES[base]
            directory = (
                outlier_build(recipe, work, base)
                if model.endswith(OUTLIERS)
                else float_build(recipe, work, base)
            )
            calibration = np.load(directory / "stages" / "quantize" / "calibration.npy")
            bundle = np.load(directory / "eval" / "bundle.npz")
            reference = load(checkpoint=directory / "reference")
            for i, (backend, options, settings, label) in enumerate(EQUALIZED):
                if not TARGETS.get(backend).availability().available or (
                    backends and backend not in backends
                ):
                    continue
                for mode in ("off", "auto"):
                    stage = QuantizeStage(
                        stage="quantize",
                        equalize=mode,
                        rotate="auto" if mode == "auto" else "off",
                        **settings,
                    )
                    out = work / model / "equalization" / f"{i}-{mode}"
                    out.mkdir(parents=True, exist_ok=True)
                    request = LowerRequest(
                        directory / "export" / "model.onnx",
                        "int8",
                        reference.config,
                        options,
                        stage,
                        calibration,
                        checkpoint=directory / "reference",
                    )
                    t0 = time.perf_counter()
                    artifact, record = edgevit_int8(backend, request, out)
                    seconds = time.perf_counter() - t0
                    acc = score(backend, artifact, directory)
                    lowered = load(checkpoint=out / "equalized").model if record else reference.model
                    scheme = TARGETS.get(backend).int8_scheme(request)
                    assert scheme is not None
                    with torch.no_grad():
                        simulated = simulate(lowered, scheme, calibration)(torch.from_numpy(bundle["inputs"]))
                    sim_db = sqnr_db(bundle["reference_logits"], simulated.numpy())
                    alpha = None if record is None else record["alpha"]
                    pick = None if record is None else record.get("simulated_alpha")
                    unconfirmed = "" if pick is None else f", simulated {pick} not confirmed"
                    rows.append(
                        {
                            "model": model,
                            "backend": label,
                            "equalize": mode,
                            "alpha": alpha,
                            # the simulator's pick that the built artifact did not confirm, if any
                            "unconfirmed_alpha": pick,
                            "measured_on_calibration_db": None
                            if record is None
                            else record.get("measured_sqnr_db"),
                            **figures(acc),
                            "simulated_sqnr_db": round(sim_db, 1),
                            "seconds": round(seconds, 1),
                        }
                    )
                    print(
                        f"{model:16s} {label:34s} equalize {mode:4s} (alpha {alpha}{unconfirmed}) "
                        f"drop {acc.top1_drop:+5.2f} "
                        f"SQNR {acc.sqnr_db:5.1f} dB, simulated {sim_db:5.1f} dB ({seconds:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


def print_equalization(rows: list[dict[str, Any]]) -> None:
    print(
        "| model | backend | equalize | alpha | top-1 drop | agreement | logit SQNR dB | simulated SQNR dB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['backend']} | {r['equalize']} | {r['alpha']}"
            f"{'' if r.get('unconfirmed_alpha') is None else ' (' + str(r['unconfirmed_alpha']) + ' not confirmed)'}"
            f" | {r['top1_drop']:+.2f} | "
            f"{r['agreement']:.4f} | {r['sqnr_db']:.1f} | {r['simulated_sqnr_db']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits,shapes")
    parser.add_argument("--rows", default="calibration", help="calibration,equalization")
    parser.add_argument(
        "--backends", default="", help="equalization rows: only these backends (default: all)"
    )
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    kinds = [k for k in args.rows.split(",") if k]
    rows: list[dict[str, Any]] = []
    equalization: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-calib-") as tmp:
        work = args.out or Path(tmp)
        if "calibration" in kinds:
            rows = run(models, work)
        if "equalization" in kinds:
            equalization = run_equalization(models, work, [b for b in args.backends.split(",") if b])
    if equalization:
        print_equalization(equalization)
    if not rows:
        print(json.dumps({"bench": "calibration", "rows": rows, "equalization": equalization}))
        return
    print("| model | backend | setting | top-1 drop | agreement | logit SQNR dB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['backend']} | {r['setting']} | {r['top1_drop']:+.2f} | "
            f"{r['agreement']:.4f} | {r['sqnr_db']:.1f} |"
        )
    print(json.dumps({"bench": "calibration", "rows": rows, "equalization": equalization}))


if __name__ == "__main__":
    main()
