"""Helpers for the benchmarks in tools/: scratch builds, scoring an artifact, and (``peers``) what
peers' default tools make, so that both are measured side by side in one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from edgevit.check.accuracy import AccuracyResult, compare


def float_build(recipe_file: Path, work: Path, name: str) -> Path:
    """Build ``recipe_file`` with only its quantize stage and one fp32 target into ``work/name``:
    the float export, calibration set and evaluation bundle a benchmark quantizes and scores with."""
    from edgevit.pipeline import build

    doc = yaml.safe_load(recipe_file.read_text())
    doc["name"] = f"bench-{name}"
    doc["stages"] = [{"stage": "quantize"}]
    doc["targets"] = [{"name": "ort-fp32", "backend": "onnxruntime", "precision": "fp32"}]
    doc["check"] = {"runs": 3, "warmup": 1}
    doc["gates"] = {"max_top1_drop": None, "max_compression_top1_drop": None}
    path = work / f"{name}.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return build(path, work / name).directory


def score(backend: str, artifact: Path, directory: Path, threads: int = 2) -> AccuracyResult:
    """Accuracy of ``artifact`` on a build's evaluation set, against that build's float reference."""
    from edgevit.targets import TARGETS

    bundle = np.load(directory / "eval" / "bundle.npz")
    x = bundle["inputs"]
    with TARGETS.get(backend).runner(artifact, threads, tuple(x.shape[1:])) as runner:
        return compare(runner.infer_all(x, 64), bundle["labels"], bundle["reference_logits"])


def figures(acc: AccuracyResult) -> dict[str, float]:
    """A benchmark row's accuracy figures, rounded as the tables print them."""
    return {
        "top1_drop": round(acc.top1_drop, 2),
        "agreement": round(acc.agreement, 4),
        "sqnr_db": round(acc.sqnr_db, 1),
    }
