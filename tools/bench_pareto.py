"""edgevit's INT8 against the defaults of each backend's own tool, side by side in one run.

Per backend, these INT8 variants are made from the same float models with the same calibration
images and run by the same runners:

  onnxruntime  ort-dynamic (quantize_dynamic defaults), ort-static (quantize_static defaults)
  openvino     nncf-default (nncf.quantize defaults), nncf-transformer (model_type=TRANSFORMER)
  tflite       aieq-static, aieq-dynamic (ai-edge-quantizer's static_wi8_ai8 and dynamic_wi8_afp32)
  every one    edgevit (the quantize stage's defaults), edgevit+prune+kd (digits-pruned-int8's
               prune + distill stages first; accuracy on digits, latency on the pruned ViT-Plus-base)

Accuracy: top-1 drop and logit SQNR against the float model, on the digits default and on the
harder shapes model (their recipes' calibration and evaluation sets), and on their
function-preserving outlier variants (``-outliers``: 2 LayerNorm-output channels per Linear input
scaled x30-x60, as trained ViTs have them; edgevit.bench.outlier_build). Latency: p50 at batch 1 of
ViT-Plus-base at 224 (random weights; latency does not depend on them), as a ratio to the
backend's FP32, timed in interleaved rounds so drift hits all variants alike.

A peer *dominates* edgevit on a backend when it is at least as good on every figure (top-1 drop
and SQNR on both models, latency ratio) and better on one; ties are within 0.01 points, 0.1 dB
and 3% latency. Prints a table, writes a plot (--plot), and ends with one JSON line.

    .venv/bin/python tools/bench_pareto.py [--backends onnxruntime,openvino,tflite] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from edgevit.bench import OUTLIERS, edgevit_int8, figures, float_build, outlier_build, peers, score
from edgevit.check.latency import interleaved
from edgevit.data.stream import Tensors
from edgevit.hostinfo import host_facts
from edgevit.models.load import config_for, create, load, save
from edgevit.paths import recipes_dir
from edgevit.pipeline import build
from edgevit.pruning.plan import prune
from edgevit.recipe.schema import PruneStage, QuantizeStage
from edgevit.stages.export import export_onnx
from edgevit.targets import TARGETS
from edgevit.targets.base import LowerRequest

MODELS = {"digits": "digits-ort-int8.yaml", "shapes": "shapes-int8-budget.yaml"}
ACCURACY_MODELS = ("digits", "shapes", "digits" + OUTLIERS, "shapes" + OUTLIERS)
EDGEVIT, PRUNED = "edgevit", "edgevit+prune+kd"
TIES = {"top1_drop": 0.01, "sqnr_db": 0.1, "latency_ratio": 0.03}  # absolute, absolute, relative


def _float_tflite(onnx_path: Path, checkpoint: Path, out: Path) -> Path:
    config = load(checkpoint=checkpoint).config
    out.mkdir(parents=True, exist_ok=True)
    request = LowerRequest(onnx_path, "fp32", config, {}, None, None, checkpoint=checkpoint)
    return TARGETS.get("tflite").lower(request, out)


def _variants(
    backend: str,
    onnx_path: Path,
    checkpoint: Path,
    calibration: np.ndarray,
    out: Path,
    failed: dict[str, str],
    equalize: bool = True,
) -> dict[str, Path]:
    """edgevit's INT8 (as a build makes it: equalized where its grid is modelled) and each peer's
    for one backend, from one float model; a peer that fails is recorded in ``failed`` (it then
    has no figures, and cannot dominate). ``equalize=False`` for latency: equalization only
    changes weight values, never the graph."""
    config = load(checkpoint=checkpoint).config
    made: dict[str, Path] = {}
    (out / EDGEVIT).mkdir(parents=True, exist_ok=True)
    stage = QuantizeStage(
        stage="quantize", equalize="auto" if equalize else "off", rotate="auto" if equalize else "off"
    )
    request = LowerRequest(onnx_path, "int8", config, {}, stage, calibration, checkpoint=checkpoint)
    made[EDGEVIT] = edgevit_int8(backend, request, out / EDGEVIT)[0]
    for name, (fn, start) in peers.PEERS[backend].items():
        if start not in ("onnx", "tflite"):  # Core ML's peer starts from a float .mlpackage
            failed[f"{out.parent.name}/{backend}/{name}"] = (
                f"no float {start} here; tools/bench_real.py runs it"
            )
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        source = onnx_path if start == "onnx" else _float_tflite(onnx_path, checkpoint, out / "float")
        t0 = time.perf_counter()
        try:
            made[name] = fn(source, calibration, out / name)
        except Exception as exc:  # a peer tool failing on a model is a finding, not a crash
            first = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
            failed[f"{out.parent.name}/{backend}/{name}"] = f"{type(exc).__name__}: {first[:200]}"
            print(f"  {backend} {name}: failed ({first[:200]})", file=sys.stderr, flush=True)
            continue
        print(
            f"  {backend} {name}: quantized in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True
        )
    return made


def accuracy(
    backends: list[str], work: Path, failed: dict[str, str]
) -> dict[tuple[str, str, str], dict[str, float]]:
    """{(model, backend, variant): top1_drop, sqnr_db, agreement} on the digits and shapes models
    and their function-preserving outlier variants."""
    found: dict[tuple[str, str, str], dict[str, float]] = {}
    for model in ACCURACY_MODELS:
        recipe = recipes_dir() / MODELS[model.removesuffix(OUTLIERS)]
        make = outlier_build if model.endswith(OUTLIERS) else float_build
        directory = make(recipe, work / "accuracy", model.removesuffix(OUTLIERS))
        calibration = np.load(directory / "stages" / "quantize" / "calibration.npy")
        for backend in backends:
            made = _variants(
                backend,
                directory / "export" / "model.onnx",
                directory / "reference",
                calibration,
                work / "accuracy" / model / backend,
                failed,
            )
            for variant, artifact in made.items():
                acc = score(backend, artifact, directory)
                found[model, backend, variant] = figures(acc)
                print(
                    f"{model} {backend} {variant}: {found[model, backend, variant]}",
                    file=sys.stderr,
                    flush=True,
                )
    # edgevit with prune + distill (digits-pruned-int8), scored against the unpruned float reference.
    doc = yaml.safe_load((recipes_dir() / "digits-pruned-int8.yaml").read_text())
    doc["name"] = "bench-pruned"
    doc["targets"] = [{"name": b, "backend": b, "precision": "int8"} for b in backends]
    doc["gates"] = {"max_top1_drop": None, "max_compression_top1_drop": None}
    doc["check"] = {"runs": 3, "warmup": 1}
    path = work / "pruned.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    report = build(path, work / "accuracy" / "pruned")
    for backend in backends:
        entry = report.target(backend)
        if entry.get("status") != "ok":
            continue
        acc = score(backend, report.directory / entry["artifact"], report.directory)
        found["digits", backend, PRUNED] = figures(acc)
    return found


def _interleaved_p50(
    backend: str, artifacts: dict[str, Path], sample: np.ndarray, rounds: int, runs: int, threads: int
) -> dict[str, float]:
    """Median of round p50s per artifact of one backend, alternating artifacts per round."""
    target = TARGETS.get(backend)
    runners = {
        name: (target.runner(path, threads, tuple(sample.shape[1:])).__enter__(), sample)
        for name, path in artifacts.items()
    }
    try:
        return {name: lat.p50 for name, lat in interleaved(runners, rounds, runs, warmup=3).items()}
    finally:
        for runner, _ in runners.values():
            runner.__exit__(None, None, None)


def latency(
    backends: list[str],
    work: Path,
    model_name: str,
    rounds: int,
    runs: int,
    threads: int,
    failed: dict[str, str],
) -> dict[tuple[str, str], float]:
    """{(backend, variant): p50 ms} of ViT-Plus-base at 224, FP32 included."""
    torch.manual_seed(0)
    net = create(model_name).eval()
    config = config_for(model_name, net)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((16, *config.input_size)).astype(np.float32)
    root = work / "latency"
    # The pruned structure: digits-pruned-int8's MAC budget, magnitude importance (no data needed).
    stage = PruneStage.model_validate({"stage": "prune", "target": {"macs": 0.5}, "importance": "magnitude"})
    x = torch.from_numpy(calibration)
    pruned = prune(copy.deepcopy(net), config, stage, Tensors(x, torch.zeros(len(x), dtype=torch.long)))
    p50: dict[tuple[str, str], float] = {}
    exported = {}
    for kind, (m, cfg) in {"full": (net, config), "pruned": (pruned.model.eval(), pruned.config)}.items():
        checkpoint = root / kind / "checkpoint"
        save(m, cfg, checkpoint)
        exported[kind] = (export_onnx(m, config.input_size, root / kind / "model.onnx"), checkpoint)
    for backend in backends:
        target = TARGETS.get(backend)
        simulated = target.runner_type(None).simulated
        if simulated:  # a simulation's run time is not a latency
            failed[f"latency/{backend}"] = f"not measured: only simulated on this host ({simulated})"
            continue
        onnx_path, checkpoint = exported["full"]
        (root / backend / "fp32").mkdir(parents=True, exist_ok=True)
        fp32 = target.lower(
            LowerRequest(onnx_path, "fp32", config, {}, None, None, checkpoint=checkpoint),
            root / backend / "fp32",
        )
        made = _variants(backend, onnx_path, checkpoint, calibration, root / backend, failed, equalize=False)
        artifacts = {"fp32": fp32, **made}
        pruned_onnx, pruned_ckpt = exported["pruned"]
        (root / backend / PRUNED).mkdir(parents=True, exist_ok=True)
        pruned_cfg = load(checkpoint=pruned_ckpt).config
        request = LowerRequest(
            pruned_onnx,
            "int8",
            pruned_cfg,
            {},
            QuantizeStage(stage="quantize"),
            calibration,
            checkpoint=pruned_ckpt,
        )
        artifacts[PRUNED] = target.lower(request, root / backend / PRUNED)
        for name, ms in _interleaved_p50(backend, artifacts, calibration[:1], rounds, runs, threads).items():
            p50[backend, name] = ms
            print(f"{backend} {name}: p50 {ms:.1f} ms", file=sys.stderr, flush=True)
    return p50


def _better(key: str, a: float, b: float) -> int:
    """1 if a is better than b beyond the tie margin, -1 if worse, 0 if tied."""
    if key == "latency_ratio":
        if abs(a - b) <= TIES[key] * max(a, b):
            return 0
        return 1 if a < b else -1
    if abs(a - b) <= TIES[key]:
        return 0
    lower_is_better = key == "top1_drop"
    return 1 if (a < b) == lower_is_better else -1


def dominance(rows: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per backend and peer: whether the peer dominates edgevit, and who is better on what."""
    out: dict[str, dict[str, Any]] = {}
    for backend, variants in rows.items():
        ours = variants[EDGEVIT]
        for peer, theirs in variants.items():
            if peer in (EDGEVIT, PRUNED):
                continue
            keys = [k for k in ours if k in theirs]
            verdict = {k: _better(k.split(":")[-1], theirs[k], ours[k]) for k in keys}
            peer_better = [k for k, v in verdict.items() if v > 0]
            edgevit_better = [k for k, v in verdict.items() if v < 0]
            out.setdefault(backend, {})[peer] = {
                "dominated": not edgevit_better and bool(peer_better),
                "edgevit_better_on": edgevit_better,
                "peer_better_on": peer_better,
            }
    return out


def _plot(rows: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, (backend, variants) in zip(axes[0], rows.items(), strict=True):
        for name, values in variants.items():
            if "latency_ratio" not in values or "shapes:sqnr_db" not in values:
                continue
            ours = name.startswith("edgevit")
            ax.scatter(values["latency_ratio"], values["shapes:sqnr_db"], s=60, marker="*" if ours else "o")
            ax.annotate(name, (values["latency_ratio"], values["shapes:sqnr_db"]), fontsize=8)
        ax.set_title(backend)
        ax.set_xlabel("p50 latency / FP32 (ViT-Plus-base@224)")
        ax.set_ylabel("logit SQNR dB (shapes model)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="onnxruntime,openvino,tflite")
    parser.add_argument("--latency-model", default="vit_plus_base_patch16_224")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("build/bench_pareto.png"))
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b and TARGETS.get(b).availability().available]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-pareto-") as tmp:
        work = args.out or Path(tmp)
        failed: dict[str, str] = {}
        acc = accuracy(backends, work, failed)
        p50 = latency(backends, work, args.latency_model, args.rounds, args.runs, args.threads, failed)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for (model, backend, variant), values in acc.items():
        row = rows.setdefault(backend, {}).setdefault(variant, {})
        row[f"{model}:top1_drop"], row[f"{model}:sqnr_db"] = values["top1_drop"], values["sqnr_db"]
    for (backend, variant), ms in p50.items():
        if variant == "fp32":
            continue
        row = rows.setdefault(backend, {}).setdefault(variant, {})
        row["p50_ms"] = round(ms, 2)
        row["latency_ratio"] = round(ms / p50[backend, "fp32"], 3)
    verdicts = dominance(
        {b: {v: {k: x for k, x in f.items() if k != "p50_ms"} for v, f in r.items()} for b, r in rows.items()}
    )
    _plot(rows, args.plot)

    print(f"\nINT8 vs FP32, batch 1, {args.threads} threads; accuracy against each float model")
    columns = [f"{m}:{k}" for m in ACCURACY_MODELS for k in ("top1_drop", "sqnr_db")]
    heads = " | ".join(
        f"{m} {'drop' if k == 'top1_drop' else 'SQNR dB'}" for m, k in (c.split(":") for c in columns)
    )
    print(f"| backend | variant | {heads} | p50 ms | p50 / FP32 | dominates edgevit |")
    print("|---|---|" + "---|" * (len(columns) + 3))
    for backend, variants in rows.items():
        fp32 = p50.get((backend, "fp32"))
        blanks = " | " * len(columns)
        print(f"| {backend} | fp32 |{blanks}{'—' if fp32 is None else f'{fp32:.1f}'} | 1.000 |  |")
        for variant, f in variants.items():
            cells = [f.get(k) for k in columns]
            text = ["—" if c is None else f"{c:g}" for c in cells]
            verdict = verdicts.get(backend, {}).get(variant)
            flag = "" if verdict is None else ("**yes**" if verdict["dominated"] else "no")
            print(
                f"| {backend} | {variant} | {' | '.join(text)} | {f.get('p50_ms', '—')} | "
                f"{f.get('latency_ratio', '—')} | {flag} |"
            )
    print(f"plot: {args.plot}")
    print(
        json.dumps(
            {
                "bench": "pareto",
                "latency_model": args.latency_model,
                "threads": args.threads,
                "seconds": round(time.perf_counter() - t0),
                "host": host_facts(),
                "fp32_p50_ms": {b: round(p50[b, "fp32"], 2) for b in backends if (b, "fp32") in p50},
                "rows": rows,
                "dominance": verdicts,
                "failed": failed,
                "dominated": any(v["dominated"] for per in verdicts.values() for v in per.values()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
