"""Helpers for the benchmarks in tools/: scratch builds, scoring an artifact, and (``peers``) what
peers' default tools make, so that both are measured side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edgevit.check.accuracy import AccuracyResult, compare

if TYPE_CHECKING:
    from edgevit.targets.base import LowerRequest


def float_build(recipe_file: Path, work: Path, name: str, checkpoint: Path | None = None) -> Path:
    """Build ``recipe_file`` (its model, or ``checkpoint``) with only its quantize stage and one fp32
    target into ``work/name``: the float export, calibration set and evaluation bundle a benchmark
    quantizes and scores with."""
    from edgevit.pipeline import build

    doc = yaml.safe_load(recipe_file.read_text())
    doc["name"] = f"bench-{name}"
    if checkpoint is not None:
        doc["model"] = {"checkpoint": str(checkpoint)}
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
    from edgevit.check.bundle import open_bundle
    from edgevit.targets import TARGETS

    x, labels, reference = open_bundle(directory / "eval" / "bundle.npz")
    with TARGETS.get(backend).runner(artifact, threads, tuple(x.shape[1:])) as runner:
        return compare(runner.infer_all(x, 64), labels, reference)


def task_scores(
    backend: str,
    artifact: Path,
    directory: Path,
    task: str = "embedding",
    threads: int = 2,
    batch: int = 16,
) -> dict[str, float | int]:
    """``task``'s scores (embedding, segmentation, depth: the tasks whose evaluation bundle holds
    3-tuples) of ``artifact`` run by ``backend``'s runner on a build's evaluation set, against that
    build's float reference outputs; inputs read and scored a batch at a time."""
    from edgevit.check.bundle import open_dense
    from edgevit.targets import TARGETS
    from edgevit.tasks import TASKS
    from edgevit.tasks.base import score_run

    x, labels, reference = open_dense(directory / "eval" / "bundle.npz")
    with TARGETS.get(backend).runner(artifact, threads, tuple(x.shape[1:])) as runner:
        scores, _ = score_run(TASKS.get(task), runner.infer, x, labels, reference, batch)
    return scores


def figures(acc: AccuracyResult) -> dict[str, float]:
    """A benchmark row's accuracy figures, rounded as the tables print them."""
    return {
        "top1_drop": round(acc.top1_drop, 2),
        "agreement": round(acc.agreement, 4),
        "sqnr_db": round(acc.sqnr_db, 1),
    }


OUTLIERS = "-outliers"  # the suffix of a model's function-preserving outlier variant


def outlier_build(recipe_file: Path, work: Path, name: str) -> Path:
    """:func:`float_build` of ``name``'s function-preserving outlier variant (``edgevit.quant.
    outliers.add_outliers``: 2 LayerNorm-output channels per Linear input scaled x30-x60) into
    ``work/<name>-outliers``; the plain build ``work/<name>`` is made first if missing."""
    from edgevit.models.load import load, save
    from edgevit.quant.outliers import add_outliers

    plain = work / name
    if not (plain / "reference").is_dir():
        float_build(recipe_file, work, name)
    loaded = load(checkpoint=plain / "reference")
    add_outliers(loaded.model, channels=2, low=30.0, high=60.0, seed=0)
    checkpoint = work / f"{name}{OUTLIERS}-checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    save(loaded.model, loaded.config, checkpoint)
    return float_build(recipe_file, work, f"{name}{OUTLIERS}", checkpoint)


def edgevit_int8(backend: str, request: LowerRequest, out: Path) -> tuple[Path, dict[str, Any] | None]:
    """What a build makes for an INT8 ``request`` on ``backend`` at its quantize stage's settings:
    equalized first (``equalize: auto``, where the grid is modelled; the simulator's strength
    confirmed on the built artifact, as a build does), its weights rounded by GPTQ
    (``weight_rounding: gptq``), then lowered into ``out``. Returns the artifact and the
    equalization record, with GPTQ's under ``gptq`` (None: neither ran)."""
    from dataclasses import replace

    from edgevit.models.load import load
    from edgevit.stages.equalize import artifact_sqnr, run_equalize, scheme_for, with_float_transforms
    from edgevit.stages.gptq import rounded_request, run_gptq
    from edgevit.targets import TARGETS

    q = request.quantize
    scheme = scheme_for(backend, request)
    record = None
    if q is not None and q.folds and scheme is not None and request.checkpoint is not None:
        assert request.calibration is not None
        loaded = load(checkpoint=request.checkpoint)
        eq_dir = out / "equalized"
        eq_dir.mkdir(parents=True, exist_ok=True)
        measure = artifact_sqnr(backend, request, loaded.model, 2, 16, out)
        record = run_equalize(loaded.model, loaded.config, scheme, q, request.calibration, eq_dir, measure)
        request = replace(request, onnx_path=eq_dir / "model.onnx", checkpoint=eq_dir)
        with_float_transforms(request, record)
    if q is not None and q.weight_rounding == "gptq" and scheme is not None and request.checkpoint:
        assert request.calibration is not None
        rounded_dir = out / "gptq"
        rounded_dir.mkdir(parents=True, exist_ok=True)
        rounded = run_gptq(request.checkpoint, scheme, q, request.calibration, rounded_dir)
        request = rounded_request(request, rounded_dir, rounded)
        record = {**(record or {}), "gptq": rounded}
    return TARGETS.get(backend).lower(request, out), record
