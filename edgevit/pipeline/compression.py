"""Compression stages (prune, distill), equalization and qat as cached build steps."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevit.check import accuracy
from edgevit.check.bundle import Inputs, open_dense, write_bundle
from edgevit.data import open_data
from edgevit.data.source import require_task
from edgevit.fileio import sha256_bytes
from edgevit.models.config import ModelConfig
from edgevit.models.load import LoadedModel, load, logits_of
from edgevit.models.profile import count_macs, count_params
from edgevit.pipeline.context import BuildContext
from edgevit.pipeline.reference import Evaluation
from edgevit.quant.simulate import Scope
from edgevit.recipe.schema import DistillStage, PruneStage, TargetSpec, TrainingStage
from edgevit.stages.distill import DistillConfig, run_distill
from edgevit.stages.equalize import RECORD as EQUALIZE_RECORD
from edgevit.stages.equalize import artifact_sqnr, run_equalize, scheme_for, with_float_transforms
from edgevit.stages.export import OPSET
from edgevit.stages.prune import run_prune
from edgevit.stages.qat import LOG_FILE as QAT_LOG
from edgevit.stages.qat import QatConfig, run_qat
from edgevit.targets import LowerRequest
from edgevit.tasks.base import score_run
from edgevit.workspace import LOWERED_BUNDLE, StepResult


def stage_details(step: StepResult) -> dict[str, Any]:
    """The summary a stage wrote (prune.json, or distill.json without its per-epoch history)."""
    import json

    for name in ("prune.json", "distill.json"):
        if name in step.outputs:
            doc = json.loads(step.path(name).read_text())
            doc.pop("history", None)
            return dict(doc)
    return {}


@dataclass
class Lowered:
    """The float model the targets are built from: the reference, or the last compression
    stage's output, with its outputs on the evaluation set and the stages' records."""

    model: torch.nn.Module
    config: ModelConfig
    weights_sha: str
    step: StepResult
    outputs: Inputs
    records: list[dict[str, Any]]
    bundle: Path | None = None  # the evaluation set with this model's outputs, when stages changed it


class Compression:
    """The steps that change the float model: prune and distill, equalization and qat per INT8
    grid, and the agent's bundle of the lowered model's outputs."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def run_stages(
        self, ref: LoadedModel, ref_step: StepResult, ev: Evaluation, ref_size: dict[str, int]
    ) -> Lowered:
        """Run the recipe's prune and distill stages in order, each on the previous one's model."""
        r, task = self.ctx.recipe, self.ctx.task
        model, cfg, weights_sha = ref.model, ref.config, ref_step.outputs["model.safetensors"]
        outputs, prev_step, records = ev.outputs, ref_step, []
        for index, stage in enumerate(r.compression()):
            prev_step = self.compress_step(index, stage, ref_step, prev_step, model, cfg)
            loaded = load(checkpoint=prev_step.directory)
            model, cfg, weights_sha = loaded.model, loaded.config, prev_step.outputs["model.safetensors"]
            if task.name == "classification":
                outputs = logits_of(model, ev.x, r.check.eval_batch)
                top1 = accuracy.top1(outputs, ev.labels)
                scores: dict[str, Any] = {"top1": round(top1, 4), "top1_drop": round(ev.top1 - top1, 4)}
            else:  # scored against the maps and the reference batch by batch, never held whole
                scores, _ = score_run(
                    task, self._runner(model), ev.x, ev.labels, ev.outputs, r.check.eval_batch
                )
            size = self.size_record(model, cfg, prev_step.path("model.safetensors"))
            records.append(
                {
                    "stage": stage.stage,
                    "step": prev_step.name,
                    **size,
                    **scores,
                    "reused": prev_step.reused,
                    "details": stage_details(prev_step),
                }
            )
            self.ctx.log(
                f"{stage.stage}: {size['params'] / 1e6:.2f}M params, {size['macs'] / 1e6:.1f}M MACs "
                f"({size['macs'] / ref_size['macs']:.2f}x), float {task.summary(scores)}"
                f"{' (reused)' if prev_step.reused else ''}"
            )
        if not records:
            return Lowered(model, cfg, weights_sha, prev_step, outputs, records)
        bundle = self.lowered_bundle(ev, model, outputs, weights_sha)
        if task.name != "classification":
            outputs = open_dense(bundle)[2]  # read a batch at a time
        return Lowered(model, cfg, weights_sha, prev_step, outputs, records, bundle)

    def _runner(self, model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        """``model`` as a function of a batch of preprocessed images."""
        batch = self.ctx.recipe.check.eval_batch
        return lambda xb: logits_of(model, xb, batch)

    def compress_step(
        self,
        index: int,
        stage: PruneStage | DistillStage,
        ref_step: StepResult,
        prev: StepResult,
        model: torch.nn.Module,
        cfg: ModelConfig,
    ) -> StepResult:
        """Run one prune or distill stage as a cached step on ``model``, the output of step ``prev``."""
        r = self.ctx.recipe
        where = f"stages[{r.stages.index(stage)}]"
        base_key = {
            "input": prev.outputs["model.safetensors"],
            "stage": stage.identity() if isinstance(stage, TrainingStage) else stage.model_dump(mode="json"),
            "torch": self.ctx.versions["torch"],
        }
        classes = cfg.class_names
        if isinstance(stage, PruneStage):
            data = require_task(  # a dense model's importance needs the maps
                open_data(r.data.calibration, classes, r.base_dir, cfg.task), cfg.task, "data.calibration"
            )
            return self.ctx.ws.step(
                f"stages/{index}-prune",
                {**base_key, "data": self.ctx.data_sha256(data, r.data.calibration)},
                lambda d: run_prune(model, cfg, stage, data, d, where, self.ctx.log),
                {"producer": "stages.prune", "data": data.description},
            )
        assert r.data.train is not None  # the schema requires it with a distill stage
        train_raw = open_data(r.data.train, classes, r.base_dir)  # streamed: hashed, not held
        student = stage.student or str(prev.directory)
        job = DistillConfig(
            teacher=str(ref_step.directory),
            student=student,
            data=r.data.train,
            base_dir=str(r.base_dir),
            settings=stage,
        )
        self.ctx.log(
            f"{stage.stage}: {stage.epochs} epochs on {train_raw.description}, {stage.nproc} process(es)"
        )
        return self.ctx.ws.step(
            f"stages/{index}-distill",
            {
                **base_key,
                "teacher": ref_step.outputs["model.safetensors"],
                "student": stage.student,
                "data": self.ctx.data_sha256(train_raw, r.data.train),
            },
            lambda d: run_distill(job, d, self.ctx.progress),
            {"producer": "stages.distill", "data": train_raw.description},
            resumable=True,
        )

    def equalize(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        model: torch.nn.Module,
        cfg: ModelConfig,
        weights_sha: str,
        calib_sha: str | None,
    ) -> tuple[str | None, dict[str, Any]]:
        """Point ``request`` at the model equalized for ``spec``'s INT8 grid (a cached step); return
        that ONNX's sha256 (None: not equalized) and what the report says about it."""
        scheme = scheme_for(spec.backend, request)
        if scheme is None:
            note = f"not applied: the INT8 simulator does not model {spec.backend} with this scope yet"
            self.ctx.log(f"{spec.name}: equalization {note}")
            return None, {"applied": False, "reason": note}
        assert request.quantize is not None and request.calibration is not None
        stage, calibration = request.quantize, request.calibration
        r = self.ctx.recipe
        measure = artifact_sqnr(
            spec.backend,
            request,
            model,
            r.check.threads,
            r.check.eval_batch,
            self.ctx.ws.root,
            self.ctx.task.normalise,
        )
        step = self.ctx.ws.step(
            f"equalize/{scheme.tag}",  # one step per INT8 grid: targets that share it share the work
            {
                "confirmed_by": None if measure is None else [spec.backend, spec.options, spec.device],
                "weights": weights_sha,
                "calibration": calib_sha,
                "scheme": asdict(scheme),
                "scope": {"patch_embed": stage.patch_embed, "float_layers": stage.float_layers},
                "equalize": stage.equalize,
                "rotate": stage.rotate,
                **({"rotation_seeds": stage.rotation_seeds} if stage.rotation_seeds != 1 else {}),
                "opset": OPSET,
                "torch": self.ctx.versions["torch"],
            },
            lambda d: run_equalize(model, cfg, scheme, stage, calibration, d, measure),
            {"producer": "stages.equalize"},
        )
        record = json.loads(step.path(EQUALIZE_RECORD).read_text())
        request.onnx_path, request.checkpoint = step.path("model.onnx"), step.directory
        with_float_transforms(request, record)
        for why in ("reason", "note"):
            if record.get(why):
                self.ctx.log(
                    f"{spec.name}: equalization {'not applied: ' if why == 'reason' else ''}{record[why]}"
                )
        rotated = " rotated," if record.get("rotation") else ""
        self.ctx.log(
            f"{spec.name}: equalization{rotated} alpha {record['alpha']} (simulated SQNR by candidate: "
            f"{record['simulated_sqnr_db']}){' (reused)' if step.reused else ''}"
        )
        applied = record["alpha"] is not None or record.get("rotation") is not None
        return step.outputs["model.onnx"], {"applied": applied, **record}

    def qat(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: Inputs,
        reference: Inputs,
    ) -> tuple[str, dict[str, Any]]:
        """Point ``request`` at the model trained against ``spec``'s INT8 grid (one cached,
        resumable step per grid and input model); return its ONNX's sha256 and the stage's record
        (with the trained float model's scores on the evaluation set against ``labels`` and, for a
        dense task, the outputs of the model it started from, ``reference``)."""
        r, stage = self.ctx.recipe, self.ctx.recipe.qat_settings()
        assert stage is not None and r.data.train is not None and request.checkpoint is not None
        scheme = scheme_for(spec.backend, request)
        if scheme is None:
            note = f"not applied: the INT8 simulator does not model {spec.backend} with these options"
            self.ctx.log(f"{spec.name}: qat {note}")
            return onnx_sha, {"applied": False, "reason": note}
        assert request.quantize is not None
        scope = Scope.of(request.quantize)
        task = self.ctx.task
        train_raw = require_task(  # streamed
            open_data(r.data.train, request.model_config.class_names, r.base_dir, task.name),
            task.name,
            "data.train",
        )
        job = QatConfig(
            model=str(request.checkpoint),
            scheme=asdict(scheme),
            patch_embed=scope.patch_embed,
            matmuls=scope.matmuls,
            float_layers=scope.float_layers,
            calibration=str(self.ctx.calibration_file),
            data=r.data.train,
            base_dir=str(r.base_dir),
            settings=stage,
        )
        self.ctx.log(
            f"{spec.name}: qat against {scheme.tag}, {stage.epochs} epochs on {train_raw.description}, "
            f"{stage.nproc} process(es)"
        )
        step = self.ctx.ws.step(
            f"qat/{scheme.tag}{'-widest' if scope.matmuls else ''}",
            {
                "input_onnx": onnx_sha,  # the equalized or plain export of the model it starts from
                "scheme": asdict(scheme),
                "scope": asdict(scope),
                "calibration": calib_sha,
                "data": self.ctx.data_sha256(train_raw, r.data.train),
                "stage": stage.identity(),
                "torch": self.ctx.versions["torch"],
            },
            lambda d: run_qat(job, d, self.ctx.progress),
            {"producer": "stages.qat", "data": train_raw.description},
            resumable=True,
        )
        record = json.loads(step.path(QAT_LOG).read_text())
        request.onnx_path, request.checkpoint = step.path("model.onnx"), step.directory
        with_float_transforms(request, record)
        trained = load(checkpoint=step.directory).model
        sim = record["simulated_sqnr_db"]
        self.ctx.log(
            f"{spec.name}: qat simulated INT8 SQNR {sim['before']} -> {sim['after']} dB in "
            f"{record['seconds_this_run']} s{' (reused)' if step.reused else ''}"
        )
        found = {
            "applied": True,
            "step": step.name,
            "reused": step.reused,
            **{k: v for k, v in record.items() if k not in ("history", "model", "settings")},
            "epochs": stage.epochs,
        }
        if task.name == "classification":
            float_logits = logits_of(trained, x_eval, r.check.eval_batch)
            found["float_top1"] = round(accuracy.top1(float_logits, labels), 4)
            found["float_logits"] = float_logits
        else:  # the trained float model's scores, batch by batch
            found["float_scores"], _ = score_run(
                task, self._runner(trained), x_eval, labels, reference, r.check.eval_batch
            )
        return step.outputs["model.onnx"], found

    def lowered_bundle(
        self, ev: Evaluation, model: torch.nn.Module, logits: Inputs, weights_sha: str
    ) -> Path:
        """The evaluation images with the lowered float model's outputs: what the profiling agent
        and validate score a device's outputs against when compression stages changed the model.
        Classification: the labels and the model's ``logits`` (small); a dense task: the maps and
        the model's outputs, computed and spooled batch by batch."""
        b = self.ctx.recipe.check.eval_batch
        x = ev.x
        key: dict[str, Any] = {"eval_bundle": ev.step.outputs["bundle.npz"]}
        if self.ctx.task.name == "classification":
            truth, src = np.asarray(ev.labels), np.asarray(logits)
            key["logits"] = sha256_bytes(src.tobytes())

            def write(d: Path) -> None:
                batches = ((x[i : i + b], src[i : i + b]) for i in range(0, len(x), b))
                write_bundle(d / "bundle.npz", len(x), x.shape[1:], batches, truth)

        else:
            key["weights"] = weights_sha
            run = self._runner(model)

            def write(d: Path) -> None:
                batches = (
                    (x[i : i + b], run(x[i : i + b]), ev.labels[i : i + b]) for i in range(0, len(x), b)
                )
                write_bundle(d / "bundle.npz", len(x), x.shape[1:], batches)

        step = self.ctx.ws.step(
            LOWERED_BUNDLE.split("/")[0], key, write, {"producer": "pipeline (agent bundle)"}
        )
        return step.path("bundle.npz")

    def size_record(self, model: torch.nn.Module, cfg: ModelConfig, weights: Path) -> dict[str, int]:
        return {
            "params": count_params(model),
            "macs": count_macs(model, cfg.input_size),
            "checkpoint_bytes": weights.stat().st_size,
        }
