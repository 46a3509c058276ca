"""One build: the reference and its evaluation set, the compression stages, every target, the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevit.check import gates
from edgevit.data import load_data
from edgevit.data.transforms import preprocess
from edgevit.devices import resolve_device
from edgevit.errors import RecipeError
from edgevit.fileio import atomic_write_json, atomic_write_text
from edgevit.hostinfo import host_facts
from edgevit.models.config import ModelConfig
from edgevit.models.load import LoadedModel, save
from edgevit.pipeline.compression import Compression, Lowered
from edgevit.pipeline.context import BuildContext, Log, _quiet
from edgevit.pipeline.recovery import Recovery
from edgevit.pipeline.reference import Evaluation, check_task_recipe, evaluation_set, load_reference
from edgevit.pipeline.rounding import round_weights
from edgevit.pipeline.targets import TargetChecker
from edgevit.recipe.loader import load_recipe
from edgevit.recipe.schema import Recipe, TargetSpec
from edgevit.report.document import Report, render_markdown
from edgevit.report.html import render_html
from edgevit.report.previews import input_preview, map_preview
from edgevit.stages.export import OPSET, export_onnx
from edgevit.targets import LowerRequest
from edgevit.tasks import TASKS
from edgevit.workspace import DEFAULT_WAIT_S, StepResult


class Build:
    """One run of a recipe into a build directory: the reference and its evaluation set, the
    compression stages, every target (checked by :class:`TargetChecker`), and the report."""

    def __init__(self, recipe: Recipe, out_dir: Path, log: Log, progress: bool = False) -> None:
        self.ctx = BuildContext(recipe, out_dir, log, progress)
        self.ws = self.ctx.ws
        self.compression = Compression(self.ctx)
        self.checker = TargetChecker(self.ctx)
        self.recovery = Recovery(self.ctx, self.checker, self.compression)

    def run(self) -> Report:
        """Build every target, check it, write the report files, and return the report."""
        ctx, r = self.ctx, self.ctx.recipe
        started = time.time()
        ref = load_reference(r, ctx.log, ctx.progress)
        if ref.config.task == "detection":
            raise RecipeError(
                "model.checkpoint is a detector: edgevit trains and scores detectors, but does not build them yet",
                "build a classification, segmentation, depth or embedding model",
            )
        ctx.task = TASKS.get(ref.config.task)
        check_task_recipe(r, ctx.task.name)
        params = sum(p.numel() for p in ref.model.parameters()) / 1e6
        ctx.log(f"model {ref.config.architecture} ({params:.2f}M params)")
        ref_key = {
            "checkpoint_sha256": ref.sha256,
            "spec": r.model.model_dump(),
            "config": ref.config.model_dump(),
        }
        ref_step = ctx.ws.step(
            "reference", ref_key, lambda d: save(ref.model, ref.config, d), {"producer": "models.load"}
        )
        ev = evaluation_set(ctx, ref, ref_step.outputs["model.safetensors"])
        ref_size = self.compression.size_record(ref.model, ref.config, ref_step.path("model.safetensors"))
        low = self.compression.run_stages(ref, ref_step, ev, ref_size)
        ctx.agent_bundle = low.bundle or ev.step.path("bundle.npz")
        calibration, calib_sha = self._calibration(low.config)
        export_step = self._export(low)
        results = [self._target(spec, low, ev, export_step, calibration, calib_sha) for spec in r.targets]
        return self._write_report(self._document(started, ref, ev, low, ref_size, results))

    def _calibration(self, cfg: ModelConfig) -> tuple[np.ndarray | None, str | None]:
        """The quantize stage's preprocessed calibration images (a cached step) and their sha256."""
        r, q = self.ctx.recipe, self.ctx.recipe.quantize()
        if q is None:
            return None, None
        calib_raw = load_data(r.data.calibration, cfg.class_names, r.base_dir)
        calib_step = self.ctx.ws.step(
            "stages/quantize",
            {"data": calib_raw.sha256(), "config": cfg.model_dump()},
            lambda d: np.save(d / "calibration.npy", preprocess(calib_raw, cfg)),
            {"producer": "stages.quantize", "data": calib_raw.description, "stage": q.model_dump()},
        )
        calibration = np.load(calib_step.path("calibration.npy"))
        self.ctx.calibration_file = calib_step.path("calibration.npy")
        self.ctx.log(f"calibration: {len(calibration)} images ({calib_raw.description})")
        return calibration, calib_step.outputs["calibration.npy"]

    def _export(self, low: Lowered) -> StepResult:
        """The lowered float model as ONNX: the hand-off to every backend (a cached step)."""
        step = self.ctx.ws.step(
            "export",
            {
                "weights": low.weights_sha,
                "config": low.config.model_dump(),
                "opset": OPSET,
                "torch": self.ctx.versions["torch"],
                "onnxscript": self.ctx.versions.get("onnxscript"),
            },
            lambda d: export_onnx(low.model, low.config.input_size, d / "model.onnx"),
            {"producer": "stages.export", "opset": OPSET},
        )
        self.ctx.log(f"export: {step.name}/model.onnx{' (reused)' if step.reused else ''}")
        return step

    def _target(
        self,
        spec: TargetSpec,
        low: Lowered,
        ev: Evaluation,
        export_step: StepResult,
        calibration: np.ndarray | None,
        calib_sha: str | None,
    ) -> dict[str, Any]:
        """One target's report entry: equalized and qat-trained for its INT8 grid where the recipe
        asks, then lowered and checked (or recovered under an accuracy budget)."""
        r, q = self.ctx.recipe, self.ctx.recipe.quantize()
        if q is not None:  # the Convs out of the INT8 scope (patch embedding, decoder) are float layers
            q = q.for_convs([n for n, m in low.model.named_modules() if isinstance(m, torch.nn.Conv2d)])
        request = LowerRequest(
            export_step.path("model.onnx"),
            spec.precision,
            low.config,
            spec.options,
            q,
            calibration,
            checkpoint=low.step.directory,
            device=resolve_device(spec.device),
        )
        onnx_sha, equalized, trained = export_step.outputs["model.onnx"], None, None
        if q is not None and q.folds and spec.precision == "int8":
            equalized_sha, equalized = self.compression.equalize(
                spec, request, low.model, low.config, low.weights_sha, calib_sha
            )
            onnx_sha = equalized_sha or onnx_sha
        rounded = None
        if q is not None and q.weight_rounding == "gptq" and spec.precision == "int8":
            if r.qat() is None:
                onnx_sha, rounded = round_weights(self.ctx, spec, request, onnx_sha, calib_sha)
            else:
                rounded = {"applied": False, "reason": "qat trains the weights against the grid instead"}
        on_demand = r.qat_on_demand() and spec.precision == "int8"
        if r.qat() is not None and spec.precision == "int8" and not on_demand:
            onnx_sha, trained = self.compression.qat(
                spec, request, onnx_sha, calib_sha, ev.x, ev.labels, low.outputs
            )
        if on_demand:
            entry, trained = self.recovery.recover(
                spec, request, onnx_sha, calib_sha, ev.x, ev.labels, low.outputs, ev.top1
            )
        else:
            qat_logits = trained.pop("float_logits", None) if trained else None
            entry = self.checker.check(
                spec, request, onnx_sha, calib_sha, ev.x, ev.labels, low.outputs, ev.top1, qat_logits
            )
        if equalized is not None:
            entry["equalization"] = equalized
        if rounded is not None:
            entry["gptq"] = rounded
        if trained is not None:
            entry["qat"] = trained
        return entry

    def _reference_preview(self, ev: Evaluation, low: Lowered) -> dict[str, Any]:
        """The first evaluation image and the float model's map of it, for report.html's pictures."""
        cfg = low.config
        return {
            "index": 0,
            "input": input_preview(ev.x[0], cfg.mean, cfg.std),
            "output": map_preview(self.ctx.task.name, low.outputs[0]),
        }

    def _document(
        self,
        started: float,
        ref: LoadedModel,
        ev: Evaluation,
        low: Lowered,
        ref_size: dict[str, int],
        results: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """report.json's document: the reference, the stages, every target, the gates' verdict."""
        r, task = self.ctx.recipe, self.ctx.task
        dense = task.name != "classification"
        gate_results = gates.evaluate_stages(low.records, r.gates, task)
        for entry, spec in zip(results, r.targets, strict=True):
            gate_results += gates.evaluate(entry, spec.gates or r.gates, task)
        return {
            "format_version": 1,
            "recipe": r.name,
            "description": r.description,
            **({"task": task.name} if dense else {}),
            "created_unix": round(started),
            "duration_s": round(time.time() - started, 2),
            "reference": {
                "model": low.config.architecture,
                "checkpoint": str(ref.checkpoint) if ref.checkpoint else None,
                "sha256": low.weights_sha,
                **(
                    {
                        "scores": ev.scores,
                        **({"preview": self._reference_preview(ev, low)} if task.maps else {}),
                    }
                    if dense
                    else {"top1": round(ev.top1, 4)}
                ),
                "samples": len(ev.labels),
                "evaluation": ev.description,
                "where": "host",
                **ref_size,
            },
            "stages": low.records,
            "lowered": {"step": low.step.name, "sha256": low.weights_sha, "model": low.config.architecture},
            "targets": results,
            "gates": [g.to_dict() for g in gate_results],
            "passed": all(g.passed for g in gate_results) and all(t["status"] != "failed" for t in results),
            "host": host_facts(),
            "versions": self.ctx.versions,
        }

    def _write_report(self, doc: dict[str, Any]) -> Report:
        root = self.ctx.ws.root
        atomic_write_json(root / "report.json", doc)
        atomic_write_text(root / "report.md", render_markdown(doc))
        atomic_write_text(root / "report.html", render_html(doc))
        manifest = self.ctx.ws.manifest(
            [root / f"report.{ext}" for ext in ("json", "md", "html")], self.ctx.versions
        )
        manifest["recipe"] = self.ctx.recipe.model_dump(mode="json")
        atomic_write_json(root / "manifest.json", manifest)
        return Report(doc, root)


def build(
    recipe: Recipe | str | Path,
    out_dir: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    log: Log | None = None,
    progress: bool = False,
    wait_s: float = DEFAULT_WAIT_S,
) -> Report:
    """Build a recipe: every target lowered, checked against the float reference, and reported.

    Args:
        recipe: a Recipe, a path to a recipe file, or a built-in recipe name.
        out_dir: build directory (default ``build/<recipe name>``); finished steps are reused.
        overrides: ``key.path=value`` strings applied to the recipe before validation.
        log: receives one line per step (default: silent).
        progress: show progress bars (training the builtin model the first time).
        wait_s: how long to wait when another build holds ``out_dir`` (then BusyError); 0: fail at once.

    Returns:
        The Report (also written as report.json, report.md and manifest.json in ``out_dir``).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise ValueError("overrides apply only when the recipe is loaded by name or path")
    out = Path(out_dir) if out_dir is not None else Path("build") / recipe.name
    run = Build(recipe, out, log or _quiet, progress)
    with run.ws.lock(wait_s, log):  # one build at a time per directory; the next one reuses its steps
        return run.run()
