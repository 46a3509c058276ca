"""Distillation at 224 px over growing ImageFolders: streamed against in-memory, 1 against 2 processes.

One epoch of ``edgevit distill`` (a ViT-Plus-tiny/16 teacher at 224 px, random weights, and its
pruned student at half the MACs) over ImageFolders of N images written by the shapes exporter at
224 px (JPEG). Each run is a fresh ``edgevit distill`` process tree, measured while it runs:
  - images/s of the training loop (from ``distill.json``) and the run's wall time;
  - peak RSS of its largest process (what ``/usr/bin/time -v`` reports);
  - peak PSS of the whole tree: trainer(s), loader workers and torchrun, sampled every 0.25 s
    (PSS shares the pages forked workers share with their parent instead of counting them twice).
Modes: ``streamed`` (the default path: sets past ``EDGEVIT_DATA_CACHE_MB`` stream through
DataLoader workers) and ``in-memory`` (the cache limit raised past the set: every image
preprocessed up front, as before streaming), the latter only for sizes up to ``--in-memory-max``.
Runs are interleaved size by size. Prints a table, then one JSON line.

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
    result = prune(model, config, stage, x, y)
    save(result.model, result.config, student_dir)
    return teacher_dir, student_dir


def _folder(work: Path, n: int) -> Path:
    from edgevit.data.shapes import write_image_folder

    root = work / f"shapes224-{n}"
    done = root / ".complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_image_folder(str(root), count=n, size=224, suffix=".jpg")
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
    env = {**os.environ, "EDGEVIT_DATA_CACHE_MB": "0" if mode == "streamed" else "1000000"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = _Sampler(proc.pid)
    _, stderr = proc.communicate()
    sampler.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"status": f"failed (exit {proc.returncode}): {stderr.strip().splitlines()[-1:]}"}
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


def main() -> int:
    from edgevit.hostinfo import host_facts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,4000,16000")
    p.add_argument("--procs", default="1,2")
    p.add_argument("--in-memory-max", type=int, default=4000, help="largest size also run in memory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="scratch directory, reused between runs (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher, student = _models(work)
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        data = _folder(work, n)
        for procs in (int(s) for s in args.procs.split(",")):
            for mode in ("streamed", "in-memory") if n <= args.in_memory_max else ("streamed",):
                row = {"images": n, "processes": procs, "mode": mode}
                row.update(_run(teacher, student, data, procs, mode, args.batch_size, work / "run"))
                print(f"  {row}", file=sys.stderr, flush=True)
                rows.append(row)
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
    print(
        json.dumps(
            {
                "bench": "train",
                "teacher": TEACHER,
                "seconds": round(time.perf_counter() - started),
                "host": host_facts(),
                "rows": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
