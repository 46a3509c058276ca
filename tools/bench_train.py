"""Distillation at 224 px over growing ImageFolders: streamed against in-memory, 1 against 2 processes.

One epoch of ``edgevit distill`` (a ViT-Plus-tiny/16 teacher at 224 px, random weights, and its
pruned student at half the MACs) over ImageFolders of N images written by the shapes exporter at
224 px (JPEG), all in its train split. Each run is a fresh ``edgevit distill`` process tree, measured while it runs:
  - images/s of the training loop (from ``distill.json``) and the run's wall time;
  - peak RSS of its largest process (what ``/usr/bin/time -v`` reports);
  - peak PSS of the whole tree: trainer(s), loader workers and torchrun, sampled every 0.25 s
    (PSS shares the pages forked workers share with their parent instead of counting them twice).
Modes: ``streamed`` (the default path: sets past ``EDGEVIT_DATA_CACHE_MB`` stream through
DataLoader workers) and ``in-memory`` (the cache limit raised past the set: every image
preprocessed up front, as before streaming), the latter only for sizes up to ``--in-memory-max``;
with ``--checkpointing`` also ``streamed, checkpointed`` (``--activation-checkpointing``).
Runs are interleaved size by size. With ``--build-eval N`` also ``edgevit build`` of a recipe whose
evaluation set is N of those images (ONNX Runtime FP32 and INT8, OpenVINO INT8), streamed and in
memory, measured the same way. Prints tables, then one JSON line.

    .venv/bin/python tools/bench_train.py [--sizes 1000,4000,16000] [--procs 1,2] [--in-memory-max 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TEACHER = "vit_plus_tiny_patch16_224"


def _models(work: Path) -> tuple[Path, Path]:
    """A random-weight teacher and its student pruned to half the MACs (magnitude importance)."""
    import torch

    from edgevit.data.shapes import CLASS_NAMES
    from edgevit.data.stream import Tensors
    from edgevit.models.load import create_configured, save
    from edgevit.pruning import prune
    from edgevit.recipe.schema import PruneStage

    teacher_dir, student_dir = work / "teacher", work / "student"
    if (student_dir / "config.json").is_file():
        return teacher_dir, student_dir
    torch.manual_seed(0)
    settings = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    model, config = create_configured(TEACHER, len(CLASS_NAMES), list(CLASS_NAMES), settings, {})
    save(model, config, teacher_dir)
    stage = PruneStage.model_validate({"stage": "prune", "target": {"macs": 0.5}, "importance": "magnitude"})
    x, y = torch.randn(8, *config.input_size), torch.arange(8) % len(CLASS_NAMES)
    result = prune(model, config, stage, Tensors(x, y))
    save(result.model, result.config, student_dir)
    return teacher_dir, student_dir


def _folder(work: Path, n: int) -> Path:
    from edgevit.data.shapes import write_image_folder

    root = work / f"shapes224-{n}"  # root/train/<class>/: the train split is every image
    done = root / ".complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_image_folder(str(root / "train"), count=n, size=224, suffix=".jpg")
        done.write_text(str(n))
    return root


class _Sampler:
    """Peak memory of a process tree, sampled: the largest RSS of one process, the summed PSS."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.max_rss = 0
        self.max_pss = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            pss = 0
            for proc in tree:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                self.max_rss = max(self.max_rss, info.rss)
                pss += info.pss
            self.max_pss = max(self.max_pss, pss)
            self.processes = max(self.processes, len(tree))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _measured(cmd: list[str], cache_mb: str) -> tuple[int, str, str, float, _Sampler]:
    """Run ``cmd`` with ``EDGEVIT_DATA_CACHE_MB=cache_mb``, sampling its process tree's memory:
    (exit code, stdout, stderr, wall seconds, the sampler)."""
    env = {**os.environ, "EDGEVIT_DATA_CACHE_MB": cache_mb}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = _Sampler(proc.pid)
    stdout, stderr = proc.communicate()
    sampler.stop()
    return proc.returncode, stdout, stderr, time.perf_counter() - t0, sampler


def _run(
    teacher: Path, student: Path, data: Path, procs: int, mode: str, batch: int, out: Path
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "edgevit.cli",
        "distill",
        "--teacher",
        str(teacher),
        "--student",
        str(student),
    ]
    cmd += [
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        str(batch),
        "--quiet",
        "--json",
        "-o",
        str(out),
    ]
    if procs > 1:
        cmd += ["--nproc", str(procs)]
    if mode.endswith("checkpointed"):
        cmd += ["--activation-checkpointing"]
    code, _, stderr, wall, sampler = _measured(cmd, "1000000" if mode == "in-memory" else "0")
    if code != 0:
        return {"status": f"failed (exit {code}): {stderr.strip().splitlines()[-1:]}"}
    log = json.loads((out / "distill.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "status": "ok",
        "images_per_second": log["images_per_second"],
        "wall_s": round(wall, 1),
        "peak_rss_largest_mb": round(sampler.max_rss / 2**20),
        "peak_pss_tree_mb": round(sampler.max_pss / 2**20),
        "trainer_peak_rss_mb": log["peak_rss_mb"],
        "tree_processes": sampler.processes,
        "data": log["data"],
        "loss": log["history"][-1]["loss"],
    }


def _build(teacher: Path, data: Path, n: int, mode: str, work: Path) -> dict[str, Any]:
    """``edgevit build`` of a recipe whose evaluation set is ``n`` of the folder's images (ONNX
    Runtime FP32 and INT8, OpenVINO INT8), measured like a distillation run."""
    import yaml

    out = work / "build"
    shutil.rmtree(out, ignore_errors=True)
    recipe = {
        "name": f"bench-train-eval-{n}",
        "model": {"checkpoint": str(teacher)},
        "data": {
            "calibration": {"source": str(data), "split": "train", "count": 64},
            "evaluation": {"source": str(data / "train"), "split": "all", "count": n},
        },
        "stages": [{"stage": "quantize"}],
        "targets": [
            {"name": "ort-fp32", "backend": "onnxruntime"},
            {"name": "ort-int8", "backend": "onnxruntime", "precision": "int8"},
            {"name": "ov-int8", "backend": "openvino", "precision": "int8"},
        ],
        "check": {"runs": 5, "warmup": 1},
        "gates": {"max_top1_drop": None},
    }
    path = work / "eval-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "edgevit.cli", "build", str(path), "-o", str(out), "--quiet", "--json"]
    code, stdout, stderr, wall, sampler = _measured(cmd, "256" if mode == "streamed" else "1000000")
    if code not in (0, 1):  # 1: a gate failed, the report is there
        return {"status": f"failed (exit {code}): {stderr.strip().splitlines()[-1:]}"}
    report = json.loads(stdout)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "status": "ok",
        "wall_s": round(wall, 1),
        "peak_rss_largest_mb": round(sampler.max_rss / 2**20),
        "peak_pss_tree_mb": round(sampler.max_pss / 2**20),
        "tree_processes": sampler.processes,
        "accuracy": {t["name"]: t.get("accuracy", {}).get("sqnr_db") for t in report["targets"]},
    }


def main() -> int:
    from edgevit.hostinfo import host_facts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,4000,16000", help='folder sizes to distill on ("": none)')
    p.add_argument("--procs", default="1,2")
    p.add_argument("--in-memory-max", type=int, default=4000, help="largest size also run in memory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="scratch directory, reused between runs (default: a temporary one)")
    p.add_argument(
        "--checkpointing", action="store_true", help="also run streamed with --activation-checkpointing"
    )
    p.add_argument(
        "--build-eval", type=int, default=0, help="also build a recipe evaluating this many images"
    )
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher, student = _models(work)
    rows: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for n in sizes:
        data = _folder(work, n)
        for procs in (int(s) for s in args.procs.split(",")):
            modes = ["streamed", *(["streamed, checkpointed"] if args.checkpointing else [])]
            for mode in [*modes, "in-memory"] if n <= args.in_memory_max else modes:
                row = {"images": n, "processes": procs, "mode": mode}
                row.update(_run(teacher, student, data, procs, mode, args.batch_size, work / "run"))
                print(f"  {row}", file=sys.stderr, flush=True)
                rows.append(row)
    builds: list[dict[str, Any]] = []
    if args.build_eval:
        data = _folder(work, max([args.build_eval, *sizes]))
        for mode in ("streamed", "in-memory"):
            row = {"evaluation_images": args.build_eval, "mode": mode}
            row.update(_build(teacher, data, args.build_eval, mode, work))
            print(f"  {row}", file=sys.stderr, flush=True)
            builds.append(row)
    print(
        "| images | processes | data | images/s | wall s | peak RSS, largest process MB | peak PSS, tree MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['images']} | {r['processes']} | {r['mode']} | {r['status']} | | | |")
            continue
        print(
            f"| {r['images']} | {r['processes']} | {r['mode']} | {r['images_per_second']} | {r['wall_s']} | "
            f"{r['peak_rss_largest_mb']} | {r['peak_pss_tree_mb']} |"
        )
    if builds:
        print()
        print(
            "| edgevit build, evaluation images | data | wall s | peak RSS, largest process MB | peak PSS, tree MB |"
        )
        print("|---|---|---|---|---|")
        for r in builds:
            cells = (
                [r["wall_s"], r["peak_rss_largest_mb"], r["peak_pss_tree_mb"]]
                if r["status"] == "ok"
                else [r["status"], "", ""]
            )
            print(f"| {r['evaluation_images']} | {r['mode']} | " + " | ".join(str(c) for c in cells) + " |")
    print(
        json.dumps(
            {
                "bench": "train",
                "teacher": TEACHER,
                "seconds": round(time.perf_counter() - started),
                "host": host_facts(),
                "rows": rows,
                "builds": builds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
