"""Orchestration: recipe -> float reference -> stages -> ONNX -> per-target lower + check -> report."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevit import __version__
from edgevit.builtin import resolve_builtin
from edgevit.check import accuracy, gates, latency
from edgevit.check.bundle import BundleInputs, Inputs, open_bundle, write_bundle
from edgevit.data import DataSpec, ImageSource, load_data, open_data
from edgevit.data.source import verified_sha256
from edgevit.data.stream import Images
from edgevit.data.transforms import preprocess
from edgevit.devices import resolve_device
from edgevit.errors import EdgeVitError, NotCheckable, RecipeError
from edgevit.fileio import atomic_write_json, atomic_write_text, sha256_bytes
from edgevit.hostinfo import host_facts
from edgevit.models.config import ModelConfig
from edgevit.models.load import LoadedModel, load, logits_of, save
from edgevit.models.profile import count_macs, count_params
from edgevit.quant.sensitivity import Ranking
from edgevit.quant.simulate import Scope
from edgevit.recipe.loader import load_recipe
from edgevit.recipe.schema import DistillStage, PruneStage, Recipe, TargetSpec, TrainingStage
from edgevit.report.document import Report, render_markdown
from edgevit.report.html import render_html
from edgevit.stages.distill import DistillConfig, run_distill
from edgevit.stages.equalize import RECORD as EQUALIZE_RECORD
from edgevit.stages.equalize import run_equalize, scheme_for
from edgevit.stages.export import OPSET, export_onnx
from edgevit.stages.prune import run_prune
from edgevit.stages.qat import LOG_FILE as QAT_LOG
from edgevit.stages.qat import QatConfig, run_qat
from edgevit.targets import TARGETS, LowerRequest
from edgevit.tasks import TASKS, Task
from edgevit.workspace import DEFAULT_WAIT_S, LOWERED_BUNDLE, StepResult, Workspace

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the artifacts (backends only if installed)."""
    import importlib.metadata as md

    versions = {"edgevit": __version__, "python": platform.python_version()}
    for dist in (
        "torch",
        "timm",
        "onnx",
        "onnxscript",
        "numpy",
        "onnxruntime",
        "openvino",
        "nncf",
        "litert-torch",
        "ai-edge-quantizer",
        "ai-edge-litert",
        "coremltools",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    return versions


def _load_reference(recipe: Recipe, log: Log, progress: bool) -> LoadedModel:
    spec = recipe.model
    checkpoint: str | Path | None = spec.checkpoint
    if spec.checkpoint is not None and spec.checkpoint.startswith("builtin:"):
        checkpoint = resolve_builtin(spec.checkpoint.removeprefix("builtin:"), progress, log)
    elif spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        checkpoint = path if path.is_absolute() else recipe.base_dir / path
    torch.manual_seed(0)  # a name-only model gets the same random weights every run
    return load(spec.name, checkpoint, num_classes=spec.num_classes)


def _check_dense_recipe(recipe: Recipe, task: str) -> None:
    """Raise for what a dense task's build does not do yet: compression stages, qat, the budget."""
    stages = [s.stage for s in recipe.stages if s.stage != "quantize"]
    q = recipe.quantize()
    if stages:
        raise RecipeError(
            f"stages {', '.join(stages)} are classification-only so far, and the model is a {task} model",
            "remove them: a dense model is built from its trained checkpoint (prune/distill/qat come later)",
        )
    if q is not None and q.accuracy_budget is not None:
        raise RecipeError(
            f"quantize.accuracy_budget is classification-only so far, and the model is a {task} model",
            "remove accuracy_budget; keep layers float with quantize.float_layers",
        )


def _stage_details(step: StepResult) -> dict[str, Any]:
    """The summary a stage wrote (prune.json, or distill.json without its per-epoch history)."""
    import json

    for name in ("prune.json", "distill.json"):
        if name in step.outputs:
            doc = json.loads(step.path(name).read_text())
            doc.pop("history", None)
            return dict(doc)
    return {}


def _copy_outputs(step: StepResult, directory: Path) -> None:
    """Copy a finished step's outputs into ``directory`` (another step's staging directory)."""
    for rel in step.outputs:
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(step.path(rel), directory / rel)


def _artifact_sha256(outputs: dict[str, str], main: str) -> str:
    """sha256 of an artifact file, or of a directory artifact (an .mlpackage) from its files' hashes."""
    if main in outputs:
        return outputs[main]
    prefix = main + "/"
    files = sorted(
        (rel.removeprefix(prefix), digest) for rel, digest in outputs.items() if rel.startswith(prefix)
    )
    return sha256_bytes("".join(f"{rel}\0{digest}\n" for rel, digest in files).encode())


def _lower_key(
    spec: TargetSpec,
    target: Any,
    versions: dict[str, str],
    onnx_sha: str,
    calib_sha: str | None,
    req: LowerRequest,
) -> dict[str, Any]:
    """What a target's artifact depends on: the key of its build step."""
    return {
        "onnx": onnx_sha,
        "backend": spec.backend,
        "revision": target.revision,
        "precision": spec.precision,
        "options": spec.options,
        "versions": versions,
        "quantize": req.quantize.model_dump() if req.quantize and spec.precision == "int8" else None,
        "calibration": calib_sha if spec.precision == "int8" else None,
        **target.build_settings(req),
    }


class Build:
    """One run of a recipe into a build directory."""

    def __init__(self, recipe: Recipe, out_dir: Path, log: Log, progress: bool = False) -> None:
        self.recipe = recipe
        self.progress = progress
        self.ws = Workspace(out_dir)
        self.log = log
        self.versions = library_versions()
        self._agent_bundle: Path | None = None  # the evaluation bundle the profiling agent scores against
        self._calibration_file: Path | None = None  # the quantize stage's preprocessed calibration images
        self._hashes: dict[tuple[str, tuple[str, ...]], str] = {}  # see _data_sha256
        self.task: Task = TASKS.get("classification")  # the reference model's (set by run)

    def _data_sha256(self, source: ImageSource, spec: DataSpec) -> str:
        """``source``'s sha256, checked against ``spec``'s: read once per build, however many steps
        (distill, one qat run per INT8 grid) key on the same images (and label order)."""
        key = (spec.model_dump_json(), tuple(source.class_names))
        if key not in self._hashes:
            self._hashes[key] = verified_sha256(source, spec)
        return self._hashes[key]

    def run(self) -> Report:
        """Build every target, check it, write the report files, and return the report."""
        r = self.recipe
        started = time.time()
        ref = _load_reference(r, self.log, self.progress)
        cfg = ref.config
        self.task = task = TASKS.get(cfg.task)
        dense = task.name != "classification"
        if dense:
            _check_dense_recipe(r, task.name)
        self.log(
            f"model {cfg.architecture} ({sum(p.numel() for p in ref.model.parameters()) / 1e6:.2f}M params)"
        )

        ref_key = {"checkpoint_sha256": ref.sha256, "spec": r.model.model_dump(), "config": cfg.model_dump()}
        ref_step = self.ws.step(
            "reference", ref_key, lambda d: save(ref.model, cfg, d), {"producer": "models.load"}
        )
        weights_sha = ref_step.outputs["model.safetensors"]

        eval_src = open_data(
            r.data.evaluation, cfg.class_names, r.base_dir, cfg.task
        )  # read, never held whole
        if eval_src.task != task.name:
            raise EdgeVitError(
                f"evaluation data {eval_src.description} is for {eval_src.task}, the model for {task.name}",
                "point data.evaluation at data with that task's ground truth",
            )
        if len(eval_src) == 0:
            raise EdgeVitError(f"evaluation data {eval_src.description} is empty", "check data.evaluation")
        batch = r.check.eval_batch

        def make_eval(d: Path) -> None:
            images = Images(eval_src, cfg)
            maps: list[np.ndarray] = []  # a dense task's ground truth, gathered as the images stream by

            def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                for x, y in images.in_order(batch):
                    if dense:
                        maps.append(y.numpy())
                    yield x.numpy(), logits_of(ref.model, x.numpy(), batch)

            truth = (lambda: np.concatenate(maps)) if dense else eval_src.labels
            write_bundle(d / "bundle.npz", len(images), cfg.input_size, batches(), truth)

        eval_step = self.ws.step(
            "eval",
            {
                "weights": weights_sha,
                "data": self._data_sha256(eval_src, r.data.evaluation),
                "config": cfg.model_dump(),
                "torch": self.versions["torch"],
            },
            make_eval,
            {"producer": "data+reference", "data": eval_src.description},
        )
        # the inputs are read a batch at a time from the bundle: a few thousand 224-px images are gigabytes
        x_eval, labels, ref_logits = open_bundle(eval_step.path("bundle.npz"))
        ref_top1 = accuracy.top1(ref_logits, labels) if not dense else 0.0
        ref_scores = {
            k: v for k, v in task.score(ref_logits, labels, ref_logits).items() if k in task.headline
        }
        self.log(
            f"float reference {task.summary(ref_scores)} on {len(labels)} images ({eval_src.description})"
        )
        ref_size = self._size_record(ref.model, cfg, ref_step.path("model.safetensors"))

        model, weights_sha, stage_records = ref.model, weights_sha, []
        src_logits = ref_logits
        prev_step = ref_step
        for index, stage in enumerate(r.compression()):
            prev_step = self._compress_step(index, stage, ref_step, prev_step, model, cfg)
            loaded = load(checkpoint=prev_step.directory)
            model, cfg, weights_sha = loaded.model, loaded.config, prev_step.outputs["model.safetensors"]
            src_logits = logits_of(model, x_eval, r.check.eval_batch)
            top1 = accuracy.top1(src_logits, labels)
            size = self._size_record(model, cfg, prev_step.path("model.safetensors"))
            record = {
                "stage": stage.stage,
                "step": prev_step.name,
                **size,
                "top1": round(top1, 4),
                "top1_drop": round(ref_top1 - top1, 4),
                "reused": prev_step.reused,
                "details": _stage_details(prev_step),
            }
            stage_records.append(record)
            self.log(
                f"{stage.stage}: {size['params'] / 1e6:.2f}M params, {size['macs'] / 1e6:.1f}M MACs "
                f"({size['macs'] / ref_size['macs']:.2f}x), float top-1 {top1:.2f}% "
                f"(drop {ref_top1 - top1:+.2f}){' (reused)' if prev_step.reused else ''}"
            )

        self._agent_bundle = (
            None  # the profiling agent scores classification only: a dense target's device run is timed
            if dense
            else self._lowered_bundle(x_eval, labels, src_logits, eval_step.outputs["bundle.npz"])
            if stage_records
            else eval_step.path("bundle.npz")
        )
        calibration = None
        calib_sha = None
        q = r.quantize()
        if q is not None:
            calib_raw = load_data(r.data.calibration, cfg.class_names, r.base_dir)
            calib_step = self.ws.step(
                "stages/quantize",
                {"data": calib_raw.sha256(), "config": cfg.model_dump()},
                lambda d: np.save(d / "calibration.npy", preprocess(calib_raw, cfg)),
                {"producer": "stages.quantize", "data": calib_raw.description, "stage": q.model_dump()},
            )
            calibration = np.load(calib_step.path("calibration.npy"))
            calib_sha = calib_step.outputs["calibration.npy"]
            self._calibration_file = calib_step.path("calibration.npy")
            self.log(f"calibration: {len(calibration)} images ({calib_raw.description})")

        export_step = self.ws.step(
            "export",
            {
                "weights": weights_sha,
                "config": cfg.model_dump(),
                "opset": OPSET,
                "torch": self.versions["torch"],
                "onnxscript": self.versions.get("onnxscript"),
            },
            lambda d: export_onnx(model, cfg.input_size, d / "model.onnx"),
            {"producer": "stages.export", "opset": OPSET},
        )
        onnx_path = export_step.path("model.onnx")
        self.log(f"export: {export_step.name}/model.onnx{' (reused)' if export_step.reused else ''}")

        results = []
        for spec in r.targets:
            request = LowerRequest(
                onnx_path,
                spec.precision,
                cfg,
                spec.options,
                q,
                calibration,
                checkpoint=prev_step.directory,
                device=resolve_device(spec.device),
            )
            onnx_sha, equalized, trained = export_step.outputs["model.onnx"], None, None
            if q is not None and q.equalize == "auto" and spec.precision == "int8":
                equalized_sha, equalized = self._equalize(spec, request, model, cfg, weights_sha, calib_sha)
                onnx_sha = equalized_sha or onnx_sha
            on_demand = r.qat_on_demand() and spec.precision == "int8"
            if r.qat() is not None and spec.precision == "int8" and not on_demand:
                onnx_sha, trained = self._qat(spec, request, onnx_sha, calib_sha, x_eval, labels)
            if on_demand:
                entry, trained = self._recover(
                    spec, request, onnx_sha, calib_sha, x_eval, labels, src_logits, ref_top1
                )
            else:
                qat_logits = trained.pop("float_logits", None) if trained else None
                entry = self._target(
                    spec, request, onnx_sha, calib_sha, x_eval, labels, src_logits, ref_top1, qat_logits
                )
            if equalized is not None:
                entry["equalization"] = equalized
            if trained is not None:
                entry["qat"] = trained
            results.append(entry)

        gate_results = gates.evaluate_stages(stage_records, r.gates)
        for entry, spec in zip(results, r.targets, strict=True):
            gate_results += gates.evaluate(entry, spec.gates or r.gates, task)
        doc: dict[str, Any] = {
            "format_version": 1,
            "recipe": r.name,
            "description": r.description,
            **({"task": task.name} if dense else {}),
            "created_unix": round(started),
            "duration_s": round(time.time() - started, 2),
            "reference": {
                "model": cfg.architecture,
                "checkpoint": str(ref.checkpoint) if ref.checkpoint else None,
                "sha256": weights_sha,
                **({"scores": ref_scores} if dense else {"top1": round(ref_top1, 4)}),
                "samples": len(labels),
                "evaluation": eval_src.description,
                "where": "host",
                **ref_size,
            },
            "stages": stage_records,
            "lowered": {"step": prev_step.name, "sha256": weights_sha, "model": cfg.architecture},
            "targets": results,
            "gates": [g.to_dict() for g in gate_results],
            "passed": all(g.passed for g in gate_results) and all(t["status"] != "failed" for t in results),
            "host": host_facts(),
            "versions": self.versions,
        }
        return self._write_report(doc)

    def _equalize(
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
            self.log(f"{spec.name}: equalization {note}")
            return None, {"applied": False, "reason": note}
        assert request.quantize is not None and request.calibration is not None
        stage, calibration = request.quantize, request.calibration
        step = self.ws.step(
            f"equalize/{scheme.tag}",  # one step per INT8 grid: targets that share it share the work
            {
                "weights": weights_sha,
                "calibration": calib_sha,
                "scheme": asdict(scheme),
                "scope": {"patch_embed": stage.patch_embed, "float_layers": stage.float_layers},
                "opset": OPSET,
                "torch": self.versions["torch"],
            },
            lambda d: run_equalize(model, cfg, scheme, stage, calibration, d),
            {"producer": "stages.equalize"},
        )
        record = json.loads(step.path(EQUALIZE_RECORD).read_text())
        request.onnx_path, request.checkpoint = step.path("model.onnx"), step.directory
        self.log(
            f"{spec.name}: equalization alpha {record['alpha']} (simulated SQNR by alpha: "
            f"{record['simulated_sqnr_db']}){' (reused)' if step.reused else ''}"
        )
        return step.outputs["model.onnx"], {"applied": record["alpha"] is not None, **record}

    def _qat(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: np.ndarray,
    ) -> tuple[str, dict[str, Any]]:
        """Point ``request`` at the model trained against ``spec``'s INT8 grid (one cached,
        resumable step per grid and input model); return its ONNX's sha256 and the stage's record."""
        r, stage = self.recipe, self.recipe.qat_settings()
        assert stage is not None and r.data.train is not None and request.checkpoint is not None
        scheme = scheme_for(spec.backend, request)
        if scheme is None:
            note = f"not applied: the INT8 simulator does not model {spec.backend} with these options"
            self.log(f"{spec.name}: qat {note}")
            return onnx_sha, {"applied": False, "reason": note}
        assert request.quantize is not None
        scope = Scope.of(request.quantize)
        train_raw = open_data(r.data.train, request.model_config.class_names, r.base_dir)  # streamed
        job = QatConfig(
            model=str(request.checkpoint),
            scheme=asdict(scheme),
            patch_embed=scope.patch_embed,
            matmuls=scope.matmuls,
            float_layers=scope.float_layers,
            calibration=str(self._calibration_file),
            data=r.data.train,
            base_dir=str(r.base_dir),
            settings=stage,
        )
        self.log(
            f"{spec.name}: qat against {scheme.tag}, {stage.epochs} epochs on {train_raw.description}, "
            f"{stage.nproc} process(es)"
        )
        step = self.ws.step(
            f"qat/{scheme.tag}{'-widest' if scope.matmuls else ''}",
            {
                "input_onnx": onnx_sha,  # the equalized or plain export of the model it starts from
                "scheme": asdict(scheme),
                "scope": asdict(scope),
                "calibration": calib_sha,
                "data": self._data_sha256(train_raw, r.data.train),
                "stage": stage.identity(),
                "torch": self.versions["torch"],
            },
            lambda d: run_qat(job, d, self.progress),
            {"producer": "stages.qat", "data": train_raw.description},
            resumable=True,
        )
        record = json.loads(step.path(QAT_LOG).read_text())
        request.onnx_path, request.checkpoint = step.path("model.onnx"), step.directory
        trained = load(checkpoint=step.directory).model
        float_logits = logits_of(trained, x_eval, r.check.eval_batch)
        sim = record["simulated_sqnr_db"]
        self.log(
            f"{spec.name}: qat simulated INT8 SQNR {sim['before']} -> {sim['after']} dB in "
            f"{record['seconds_this_run']} s{' (reused)' if step.reused else ''}"
        )
        return step.outputs["model.onnx"], {
            "applied": True,
            "step": step.name,
            "reused": step.reused,
            "float_top1": round(accuracy.top1(float_logits, labels), 4),
            "float_logits": float_logits,
            **{k: v for k, v in record.items() if k not in ("history", "model", "settings")},
            "epochs": stage.epochs,
        }

    def _target(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: np.ndarray,
        src_logits: np.ndarray,
        ref_top1: float,
        qat_logits: np.ndarray | None = None,
        prebuilt: StepResult | None = None,
    ) -> dict[str, Any]:
        """Lower, run and measure one target; accuracy is compared with the float model before any
        qat stage (and, after one, also with the float model it trained: ``vs_qat_float``).
        ``prebuilt``: a build step of this very request, whose artifact the target's step copies."""
        r = self.recipe
        target = TARGETS.get(spec.backend)
        entry: dict[str, Any] = {
            "name": spec.name,
            "backend": spec.backend,
            "precision": spec.precision,
            "status": "ok",
            "reason": None,
            "where": "host",
        }
        device = resolve_device(spec.device)
        remote = device.transport != "local"
        avail = target.availability()
        if not avail.available:
            self.log(f"{spec.name}: skipped ({avail.reason})")
            return {**entry, "status": "skipped", "reason": avail.reason}
        entry["versions"] = avail.versions

        def key_for(req: LowerRequest) -> dict[str, Any]:
            return _lower_key(spec, target, avail.versions, onnx_sha, calib_sha, req)

        threads = spec.threads or device.threads or r.check.threads
        built: dict[str, Any] = {}
        q = request.quantize if spec.precision == "int8" else None
        if q is not None and (q.float_layers or q.accuracy_budget) and not target.float_layers:
            why = (
                f"backend {spec.backend} cannot keep chosen layers float yet (float_layers, accuracy_budget)"
            )
            if q.float_layers:
                self.log(f"{spec.name}: failed ({why})")
                return {**entry, "status": "failed", "reason": f"{why}; remove float_layers for this recipe"}
            entry["fallback"] = {"applied": False, "reason": why}
        candidate = prebuilt  # or the search's chosen build: the target's artifact is a copy
        if q is not None and q.accuracy_budget is not None and target.float_layers:
            try:
                found, candidate = self._fallback(
                    spec, target, request, key_for, device, threads, x_eval, labels, src_logits
                )
            except EdgeVitError as exc:
                self.log(f"{spec.name}: failed ({exc})")
                return {**entry, "status": "failed", "reason": str(exc)}
            entry["fallback"] = found
            layers = sorted(set(q.float_layers) | set(found["float_layers"]))
            request = replace(request, quantize=q.model_copy(update={"float_layers": layers}))
        key = key_for(request)
        try:
            step = self.ws.step(
                f"targets/{spec.name}",
                key,
                (lambda d: _copy_outputs(candidate, d))
                if candidate
                else (lambda d: target.lower(request, d)),
                {
                    "producer": f"targets.{spec.backend}",
                    "precision": spec.precision,
                    "versions": avail.versions,
                },
            )
            main = target.artifact_name
            artifact = step.path(main)
            built = {
                **target.describe(artifact),
                "size_bytes": sum((step.directory / rel).stat().st_size for rel in step.outputs),
                "artifact": str(artifact.relative_to(self.ws.root)),
                "sha256": _artifact_sha256(step.outputs, main),
                "files": sorted(step.outputs),
                "reused": step.reused,
                "device": device.name,
            }
            settings = target.build_settings(request)
            if settings:
                built["build_settings"] = settings
            with target.runner(artifact, threads, request.model_config.input_size, device) as runner:
                logits = runner.infer_all(x_eval, r.check.eval_batch)
                simulated = runner.simulated
                findings = runner.findings()
                lat = (
                    None
                    if remote or simulated
                    else latency.measure(runner, x_eval[: r.check.batch], r.check.warmup, r.check.runs)
                )
            on_device = (
                self._on_device(spec, artifact, threads) if device.transport in ("ssh", "adb") else None
            )
            if spec.precision == "int8" and r.check.layerwise_samples:
                findings.update(self._layerwise(spec, request.onnx_path, artifact, x_eval))
        except NotCheckable as exc:  # built, but nothing here can run it: keep the artifact, skip the check
            self.log(f"{spec.name}: built, not checked ({exc})")
            return {**entry, "status": "skipped", "reason": str(exc), **built}
        except EdgeVitError as exc:
            self.log(f"{spec.name}: failed ({exc})")
            return {**entry, "status": "failed", "reason": str(exc)}
        except Exception as exc:  # a backend crashed: report it on this target, keep building the rest
            self.log(f"{spec.name}: failed ({type(exc).__name__}: {exc})")
            return {**entry, "status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
        if self.task.name != "classification":
            return self._dense_entry(
                entry,
                spec,
                logits,
                labels,
                src_logits,
                lat,
                on_device,
                simulated,
                findings,
                built,
                step.reused,
            )
        acc = accuracy.compare(logits, labels, src_logits)
        latency_ms = None if lat is None else lat.to_dict()
        measured = on_device is not None and bool(on_device.get("ok"))
        if measured:
            assert on_device is not None
            entry["where"] = on_device["where"]
            latency_ms = on_device["latency_ms"]
            findings["device_profile"] = {
                k: on_device.get(k)
                for k in (
                    "runtime",
                    "versions",
                    "device",
                    "peak_rss_mb",
                    "throughput_ips",
                    "accuracy",
                    "accuracy_note",
                    "session",
                )
                if k in on_device
            }
            by = "LiteRT's benchmark_model over adb" if device.transport == "adb" else "the profiling agent"
            own = (
                "device_profile.accuracy"
                if on_device.get("accuracy")
                else f"not there: {on_device.get('accuracy_note', 'no bundle')}"
            )
            entry["reason"] = (
                f"latency measured on device {device.name} by {by}; accuracy checked on this host with the "
                f"same artifact (the device's own result: {own})"
            )
            if simulated and on_device.get("accuracy"):  # the host only simulated it: the device's rule
                findings["host_simulation"] = {"where": f"simulated:{simulated}", "accuracy": acc.to_dict()}
                acc = accuracy.from_dict(on_device["accuracy"])
                entry["reason"] = (
                    f"latency and accuracy measured on device {device.name} by {by} "
                    f"({on_device.get('runtime')} there); the {simulated} simulation of the same artifact on "
                    "this host is under host_simulation"
                )
        elif simulated:
            entry["where"] = f"simulated:{simulated}"
            why = f" (device {device.name} not profiled)" if remote else ""
            if on_device is not None:
                why = f" (device {device.name} could not be profiled: {on_device['error']})"
            entry["reason"] = (
                f"latency not measured: no {spec.backend} runtime on this host{why}; accuracy is "
                f"from the {simulated} simulation of the same artifact"
            )
        elif remote:
            how = "cannot be reached" if device.transport == "none" else f"is reached by {device.transport}"
            if on_device is not None:
                how = f"could not be profiled ({on_device['error']})"
            entry["reason"] = (
                f"latency not measured: device {device.name} {how}; "
                "accuracy was checked on this host with the same artifact"
            )
        timing = "latency not measured" if latency_ms is None else f"p50 {latency_ms['p50']:.3f} ms"
        self.log(
            f"{spec.name}: top-1 {acc.top1:.2f}% (drop {acc.top1_drop:+.2f}), agreement "
            f"{acc.agreement:.4f}, cosine {acc.cosine:.5f}, {timing}"
            f"{' on ' + entry['where'] if measured else ''}{' (artifact reused)' if step.reused else ''}"
        )
        scores: dict[str, Any] = {**acc.to_dict(), "reference_top1_drop": round(ref_top1 - acc.top1, 4)}
        if qat_logits is not None:
            scores["vs_qat_float"] = accuracy.compare(logits, labels, qat_logits).to_dict()
        return {
            **entry,
            "accuracy": scores,
            "latency_ms": latency_ms,
            **findings,
            **built,
        }

    def _dense_entry(
        self,
        entry: dict[str, Any],
        spec: TargetSpec,
        outputs: np.ndarray,
        truth: np.ndarray,
        reference: np.ndarray,
        lat: Any,
        on_device: dict[str, Any] | None,
        simulated: str | None,
        findings: dict[str, Any],
        built: dict[str, Any],
        reused: bool,
    ) -> dict[str, Any]:
        """A dense task's target entry: its outputs (NHWC from a backend normalised to NCHW) scored
        against the maps and the float model's outputs."""
        outputs = self.task.normalise(outputs, reference.shape)
        scores = self.task.score(outputs, truth, reference)
        latency_ms = None if lat is None else lat.to_dict()
        device = resolve_device(spec.device)
        if on_device is not None and on_device.get("ok"):
            entry["where"] = on_device["where"]
            latency_ms = on_device["latency_ms"]
            findings["device_profile"] = {
                k: on_device.get(k) for k in ("runtime", "versions", "device", "session") if k in on_device
            }
            entry["reason"] = (
                f"latency measured on device {device.name}; the {self.task.name} scores were checked on this host "
                "with the same artifact (the agent scores classification only)"
            )
        elif simulated:
            entry["where"] = f"simulated:{simulated}"
            entry["reason"] = (
                f"latency not measured: no {spec.backend} runtime on this host; scores are from the "
                f"{simulated} simulation of the same artifact"
            )
        elif device.transport != "local":
            entry["reason"] = (
                f"latency not measured: device {device.name} was not profiled; the scores were checked on "
                "this host with the same artifact"
            )
        timing = "latency not measured" if latency_ms is None else f"p50 {latency_ms['p50']:.3f} ms"
        self.log(
            f"{spec.name}: {self.task.summary(scores)}, {timing}{' (artifact reused)' if reused else ''}"
        )
        return {**entry, "accuracy": scores, "latency_ms": latency_ms, **findings, **built}

    def _on_device(self, spec: TargetSpec, artifact: Path, threads: int) -> dict[str, Any] | None:
        """Profile ``artifact`` on the target's SSH device with the agent (None: not an agent artifact).

        The device scores its logits against the float model that was lowered, as the host does.
        Returns the agent's document, or ``{"ok": False, "error": ...}`` when the device could not be
        profiled (the build goes on: accuracy was checked on this host with the same artifact).
        """
        from edgevit.profiling import ProfileError, profile
        from edgevit.profiling.run import agent_runtime

        runtime = agent_runtime(spec.backend, artifact)
        if runtime is None:
            return None  # the agent does not run this backend (e.g. Core ML packages)
        c = self.recipe.check
        self.log(f"{spec.name}: profiling on device {spec.device} ({c.runs} runs)")
        try:
            result = profile(
                artifact,
                str(spec.device),
                runs=c.runs,
                threads=threads,
                warmup=c.warmup,
                batch=c.batch,
                bundle=self._agent_bundle,
                runtime=runtime,
            )
        except ProfileError as exc:
            self.log(f"{spec.name}: device profile failed ({exc})")
            return {"ok": False, "error": exc.message}
        return result.results[0]

    def _recover(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: np.ndarray,
        src_logits: np.ndarray,
        ref_top1: float,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """One INT8 target under ``accuracy_budget.recover: qat | qat_then_float``: post-training
        INT8 first (a cached step under ``search/``); only if that misses the budget, the qat stage
        against the target's grid, then the target built from the trained model (and, with
        ``qat_then_float``, the float-layer search on it). Returns the target's entry and the qat
        record (None when post-training INT8 was enough)."""
        q = request.quantize
        assert q is not None and q.accuracy_budget is not None
        budget = q.accuracy_budget
        plain = replace(request, quantize=q.model_copy(update={"accuracy_budget": None}))
        scored = self._post_training(spec, plain, onnx_sha, calib_sha, x_eval, labels, src_logits)
        args = (calib_sha, x_eval, labels, src_logits, ref_top1)
        if scored is None:  # nothing here can build or score it: the target's own check says why
            return self._target(spec, plain, onnx_sha, *args), None
        ptq, step = scored
        record: dict[str, Any] = {
            "applied": True,
            "budget": budget.model_dump(),
            "recover": budget.recover,
            "post_training": {**ptq.to_dict(), "step": step.name},
        }
        if budget.met(ptq.top1_drop, ptq.sqnr_db, ptq.agreement):
            self.log(f"{spec.name}: post-training INT8 meets the accuracy budget: no qat needed")
            entry = self._target(spec, plain, onnx_sha, *args, prebuilt=step)
            entry["fallback"] = {**record, "met": True, "needed": "none", "float_layers": [], "tried": []}
            return entry, None
        self.log(
            f"{spec.name}: post-training INT8 misses the accuracy budget (drop {ptq.top1_drop:+.2f}, SQNR "
            f"{ptq.sqnr_db:.1f} dB): recovering with qat"
        )
        onnx_sha, trained = self._qat(spec, request, onnx_sha, calib_sha, x_eval, labels)
        qat_logits = trained.pop("float_logits", None)
        if budget.recover == "qat":
            request = replace(request, quantize=plain.quantize)
        entry = self._target(spec, request, onnx_sha, *args, qat_logits)
        acc = entry.get("accuracy")
        if entry["status"] != "ok" or acc is None:
            return entry, trained
        searched = entry.get("fallback") or {}
        floated = list(searched.get("float_layers") or [])
        met = budget.met(acc["top1_drop"], acc["sqnr_db"], acc["agreement"])
        entry["fallback"] = {
            **searched,
            **record,
            "met": met,
            "needed": "qat+float" if floated else "qat",
            "float_layers": floated,
            "tried": searched.get("tried", []),
        }
        if searched.get("applied") is False:  # a backend that cannot keep layers float
            entry["fallback"]["float_search"] = searched.get("reason")
        verdict = "met" if met else "still missed"
        self.log(f"{spec.name}: after qat{' and float layers' if floated else ''} the budget is {verdict}")
        return entry, trained

    def _post_training(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: np.ndarray,
        src_logits: np.ndarray,
    ) -> tuple[accuracy.AccuracyResult, StepResult] | None:
        """Build ``request`` (post-training INT8) as a cached step and score it on the evaluation
        set; None when this host cannot build or run it."""
        target = TARGETS.get(spec.backend)
        avail = target.availability()
        if not avail.available:
            return None
        device = resolve_device(spec.device)
        threads = spec.threads or device.threads or self.recipe.check.threads
        try:
            step = self.ws.step(
                f"search/{spec.name}/post-training",
                _lower_key(spec, target, avail.versions, onnx_sha, calib_sha, request),
                lambda d: target.lower(request, d),
                {"producer": f"targets.{spec.backend} (post-training INT8, accuracy budget)"},
            )
            artifact = step.path(target.artifact_name)
            with target.runner(artifact, threads, request.model_config.input_size, device) as runner:
                logits = runner.infer_all(x_eval, self.recipe.check.eval_batch)
        except EdgeVitError as exc:  # NotCheckable included: the target's own step reports it
            self.log(f"{spec.name}: post-training INT8 not scored ({exc})")
            return None
        return accuracy.compare(logits, labels, src_logits), step

    def _fallback(
        self,
        spec: TargetSpec,
        target: Any,
        request: LowerRequest,
        key_for: Callable[[LowerRequest], dict[str, Any]],
        device: Any,
        threads: int,
        x_eval: Inputs,
        labels: np.ndarray,
        src_logits: np.ndarray,
    ) -> tuple[dict[str, Any], StepResult]:
        """The accuracy-budget search (:mod:`edgevit.quant.budget`) for one INT8 target: candidates
        are cached build steps scored on the evaluation set; the ranking is the budget's
        ``ranking`` (:mod:`edgevit.quant.sensitivity`) on calibration images."""
        from edgevit.quant.budget import BudgetSearch

        q = request.quantize
        assert q is not None and q.accuracy_budget is not None
        r = self.recipe

        def candidate(name: str, extra: list[str]) -> tuple[StepResult, Path]:
            layers = sorted(set(q.float_layers) | set(extra))
            req = replace(
                request, quantize=q.model_copy(update={"float_layers": layers, "accuracy_budget": None})
            )
            step = self.ws.step(
                f"search/{spec.name}/{name}",
                key_for(req),
                lambda d: target.lower(req, d),
                {"producer": f"targets.{spec.backend} (fallback search)", "float_layers": layers},
            )
            return step, step.path(target.artifact_name)

        def infer(artifact: Path, x: Inputs) -> np.ndarray:
            with target.runner(artifact, threads, request.model_config.input_size, device) as runner:
                return runner.infer_all(x, r.check.eval_batch)

        tried = 0

        def attempt(extra: list[str]) -> tuple[accuracy.AccuracyResult, StepResult]:
            nonlocal tried
            step, artifact = candidate(str(tried), extra)
            tried += 1
            return accuracy.compare(infer(artifact, x_eval), labels, src_logits), step

        # Rank on calibration images (not the evaluation set the budget and gates are checked on).
        images = request.calibration if request.calibration is not None else x_eval
        images = images[: q.accuracy_budget.ranking_samples]

        def rank(first: StepResult) -> Ranking:
            artifact = first.path(target.artifact_name)
            return self._ranking(spec, target, request, artifact, images, candidate, infer)

        return BudgetSearch(q.accuracy_budget, attempt, rank, self.log, spec.name).run()

    def _ranking(
        self,
        spec: TargetSpec,
        target: Any,
        request: LowerRequest,
        artifact: Path,
        images: np.ndarray,
        candidate: Callable[[str, list[str]], tuple[StepResult, Path]],
        infer: Callable[[Path, np.ndarray], np.ndarray],
    ) -> Ranking:
        """Rank the quantized layers of ``artifact`` the budget's way on ``images``. ``simulated``
        needs a grid the simulator models; where it does not, the ranking is ``measured`` and
        says why."""
        from edgevit.check import layerwise
        from edgevit.quant import sensitivity

        q = request.quantize
        assert q is not None and q.accuracy_budget is not None
        method, note = q.accuracy_budget.ranking, None
        if method == "simulated":
            scheme = scheme_for(spec.backend, request)
            if scheme is not None and request.checkpoint is not None and request.calibration is not None:
                model = load(checkpoint=request.checkpoint).model
                return sensitivity.simulated(model, scheme, request.calibration, images, Scope.of(q))
            method, note = "measured", f"the INT8 simulator does not model {spec.backend} with this scope"
        if artifact.suffix in layerwise.COMPARABLE_SUFFIXES:
            ranked = layerwise.summary(
                request.onnx_path, artifact, images[: self.recipe.check.layerwise_samples or 16], spec.backend
            )
            local = {x["layer"]: x["local_sqnr_db"] for x in ranked["layers"] if x["quantized"]}
        else:
            listed = target.quantized_layers(artifact, request.onnx_path)
            if listed is None or method == "alone":
                raise EdgeVitError(
                    f"{spec.name}: no layer-wise comparison for {artifact.suffix} artifacts",
                    "use accuracy_budget.ranking: measured",
                )
            local = dict.fromkeys(listed)
        for name in q.float_layers:
            local.pop(name, None)
        if method == "alone":
            return sensitivity.alone(local)
        with TARGETS.get("onnxruntime").runner(
            request.onnx_path, 1, request.model_config.input_size
        ) as runner:
            reference = runner.infer_all(images, self.recipe.check.eval_batch)
        self.log(f"{spec.name}: measuring the sensitivity of {len(local)} layers (one build each)")
        found = sensitivity.measured(
            local,
            reference,
            infer(artifact, images),
            lambda i, name: infer(candidate(f"sensitivity/{i}", [name])[1], images),
        )
        return found if note is None else replace(found, note=note)

    def _layerwise(self, spec: TargetSpec, float_onnx: Path, artifact: Path, x: Inputs) -> dict[str, Any]:
        """The layer-wise comparison of an INT8 artifact with the float ONNX ({} when not comparable)."""
        from edgevit.check import layerwise

        if artifact.suffix not in layerwise.COMPARABLE_SUFFIXES:
            return {}
        try:
            found = layerwise.summary(
                float_onnx, artifact, x[: self.recipe.check.layerwise_samples], spec.backend
            )
        except Exception as exc:  # a diagnosis must not fail the target it diagnoses
            self.log(f"{spec.name}: layer-wise comparison failed ({type(exc).__name__}: {exc})")
            return {"layerwise": {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}}
        worst = found["layers"][0]
        self.log(
            f"{spec.name}: layer-wise, worst quantized layer {worst['layer']} (alone: SQNR "
            f"{worst['local_sqnr_db']:.1f} dB)"
        )
        return {"layerwise": found}

    def _lowered_bundle(
        self, x_eval: BundleInputs, labels: np.ndarray, src_logits: np.ndarray, eval_sha: str
    ) -> Path:
        """The evaluation images with the lowered float model's logits: what the profiling agent scores
        a device's logits against when compression stages changed the model."""
        b = self.recipe.check.eval_batch
        step = self.ws.step(
            LOWERED_BUNDLE.split("/")[0],
            {"eval_bundle": eval_sha, "logits": sha256_bytes(src_logits.tobytes())},
            lambda d: write_bundle(
                d / "bundle.npz",
                len(x_eval),
                x_eval.shape[1:],
                ((x_eval[i : i + b], src_logits[i : i + b]) for i in range(0, len(x_eval), b)),
                labels,
            ),
            {"producer": "pipeline (agent bundle)"},
        )
        return step.path("bundle.npz")

    def _size_record(self, model: torch.nn.Module, cfg: ModelConfig, weights: Path) -> dict[str, int]:
        return {
            "params": count_params(model),
            "macs": count_macs(model, cfg.input_size),
            "checkpoint_bytes": weights.stat().st_size,
        }

    def _compress_step(
        self,
        index: int,
        stage: PruneStage | DistillStage,
        ref_step: StepResult,
        prev: StepResult,
        model: torch.nn.Module,
        cfg: ModelConfig,
    ) -> StepResult:
        """Run one prune or distill stage as a cached step on ``model``, the output of step ``prev``."""
        r = self.recipe
        where = f"stages[{r.stages.index(stage)}]"
        base_key = {
            "input": prev.outputs["model.safetensors"],
            "stage": stage.identity() if isinstance(stage, TrainingStage) else stage.model_dump(mode="json"),
            "torch": self.versions["torch"],
        }
        classes = cfg.class_names
        if isinstance(stage, PruneStage):
            data = open_data(r.data.calibration, classes, r.base_dir)
            return self.ws.step(
                f"stages/{index}-prune",
                {**base_key, "data": self._data_sha256(data, r.data.calibration)},
                lambda d: run_prune(model, cfg, stage, data, d, where, self.log),
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
        self.log(
            f"{stage.stage}: {stage.epochs} epochs on {train_raw.description}, {stage.nproc} process(es)"
        )
        return self.ws.step(
            f"stages/{index}-distill",
            {
                **base_key,
                "teacher": ref_step.outputs["model.safetensors"],
                "student": stage.student,
                "data": self._data_sha256(train_raw, r.data.train),
            },
            lambda d: run_distill(job, d, self.progress),
            {"producer": "stages.distill", "data": train_raw.description},
            resumable=True,
        )

    def _write_report(self, doc: dict[str, Any]) -> Report:
        root = self.ws.root
        atomic_write_json(root / "report.json", doc)
        atomic_write_text(root / "report.md", render_markdown(doc))
        atomic_write_text(root / "report.html", render_html(doc))
        manifest = self.ws.manifest([root / f"report.{ext}" for ext in ("json", "md", "html")], self.versions)
        manifest["recipe"] = self.recipe.model_dump(mode="json")
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
