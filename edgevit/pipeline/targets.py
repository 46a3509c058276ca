"""One target: lowered, run, scored and timed."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.check import accuracy, latency
from edgevit.check.bundle import Inputs
from edgevit.devices import resolve_device
from edgevit.errors import EdgeVitError, NotCheckable
from edgevit.fileio import sha256_bytes
from edgevit.pipeline.context import BuildContext
from edgevit.pipeline.float_search import FloatSearch
from edgevit.recipe.schema import TargetSpec
from edgevit.report.previews import map_preview
from edgevit.targets import TARGETS, LowerRequest
from edgevit.tasks.base import score_run
from edgevit.workspace import StepResult


def copy_outputs(step: StepResult, directory: Path) -> None:
    """Copy a finished step's outputs into ``directory`` (another step's staging directory)."""
    for rel in step.outputs:
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(step.path(rel), directory / rel)


def artifact_sha256(outputs: dict[str, str], main: str) -> str:
    """sha256 of an artifact file, or of a directory artifact (an .mlpackage) from its files' hashes."""
    if main in outputs:
        return outputs[main]
    prefix = main + "/"
    files = sorted(
        (rel.removeprefix(prefix), digest) for rel, digest in outputs.items() if rel.startswith(prefix)
    )
    return sha256_bytes("".join(f"{rel}\0{digest}\n" for rel, digest in files).encode())


def lower_key(
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


class TargetChecker:
    """Lowers, runs and measures one target: its artifact as a cached step, scored on the
    evaluation set against the float model, timed here or on its device, diagnosed layer by layer."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.search = FloatSearch(ctx)

    def check(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: Inputs,
        src_logits: Inputs,
        ref_top1: float,
        qat_logits: np.ndarray | None = None,
        prebuilt: StepResult | None = None,
    ) -> dict[str, Any]:
        """Lower, run and measure one target; accuracy is compared with the float model before any
        qat stage (and, after one, also with the float model it trained: ``vs_qat_float``).
        ``prebuilt``: a build step of this very request, whose artifact the target's step copies."""
        r = self.ctx.recipe
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
            self.ctx.log(f"{spec.name}: skipped ({avail.reason})")
            return {**entry, "status": "skipped", "reason": avail.reason}
        entry["versions"] = avail.versions

        def key_for(req: LowerRequest) -> dict[str, Any]:
            return lower_key(spec, target, avail.versions, onnx_sha, calib_sha, req)

        threads = spec.threads or device.threads or r.check.threads
        built: dict[str, Any] = {}
        q = request.quantize if spec.precision == "int8" else None
        if q is not None and (q.float_layers or q.accuracy_budget) and not target.float_layers:
            why = (
                f"backend {spec.backend} cannot keep chosen layers float yet (float_layers, accuracy_budget)"
            )
            if q.float_layers:
                self.ctx.log(f"{spec.name}: failed ({why})")
                return {**entry, "status": "failed", "reason": f"{why}; remove float_layers for this recipe"}
            entry["fallback"] = {"applied": False, "reason": why}
        candidate = prebuilt  # or the search's chosen build: the target's artifact is a copy
        if q is not None and q.accuracy_budget is not None and target.float_layers:
            try:
                found, candidate = self.search.run(
                    spec, target, request, key_for, device, threads, x_eval, labels, src_logits
                )
            except EdgeVitError as exc:
                self.ctx.log(f"{spec.name}: failed ({exc})")
                return {**entry, "status": "failed", "reason": str(exc)}
            entry["fallback"] = found
            layers = sorted(set(q.float_layers) | set(found["float_layers"]))
            request = replace(request, quantize=q.model_copy(update={"float_layers": layers}))
        key = key_for(request)
        try:
            step = self.ctx.ws.step(
                f"targets/{spec.name}",
                key,
                (lambda d: copy_outputs(candidate, d)) if candidate else (lambda d: target.lower(request, d)),
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
                "artifact": str(artifact.relative_to(self.ctx.ws.root)),
                "sha256": artifact_sha256(step.outputs, main),
                "files": sorted(step.outputs),
                "reused": step.reused,
                "device": device.name,
            }
            settings = target.build_settings(request)
            if settings:
                built["build_settings"] = settings
            with target.runner(artifact, threads, request.model_config.input_size, device) as runner:
                if self.ctx.task.name == "classification":
                    logits = runner.infer_all(x_eval, r.check.eval_batch)
                else:  # scored batch by batch: a dense set's outputs are never held whole
                    dense = score_run(
                        self.ctx.task, runner.infer, x_eval, labels, src_logits, r.check.eval_batch
                    )
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
            self.ctx.log(f"{spec.name}: built, not checked ({exc})")
            return {**entry, "status": "skipped", "reason": str(exc), **built}
        except EdgeVitError as exc:
            self.ctx.log(f"{spec.name}: failed ({exc})")
            return {**entry, "status": "failed", "reason": str(exc)}
        except Exception as exc:  # a backend crashed: report it on this target, keep building the rest
            self.ctx.log(f"{spec.name}: failed ({type(exc).__name__}: {exc})")
            return {**entry, "status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
        if self.ctx.task.name != "classification":
            return self._dense_entry(
                entry,
                spec,
                *dense,
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
        self.ctx.log(
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
        scores: dict[str, Any],
        first: np.ndarray,
        lat: Any,
        on_device: dict[str, Any] | None,
        simulated: str | None,
        findings: dict[str, Any],
        built: dict[str, Any],
        reused: bool,
    ) -> dict[str, Any]:
        """A dense task's target entry: its scores against the maps and the float model's outputs,
        and a preview of its first output."""
        if self.ctx.task.maps:
            findings["preview"] = {"index": 0, "output": map_preview(self.ctx.task.name, first)}
        latency_ms = None if lat is None else lat.to_dict()
        device = resolve_device(spec.device)
        if on_device is not None and on_device.get("ok"):
            entry["where"] = on_device["where"]
            latency_ms = on_device["latency_ms"]
            keys = ("runtime", "versions", "device", "session", "accuracy", "accuracy_note")
            findings["device_profile"] = {k: on_device.get(k) for k in keys if k in on_device}
            own = "device_profile.accuracy" if on_device.get("accuracy") else "not there"
            entry["reason"] = (
                f"latency measured on device {device.name}; the {self.ctx.task.name} scores were checked on this "
                f"host with the same artifact (the device's own: {own})"
            )
            if simulated and on_device.get("accuracy"):  # the host only simulated it: the device's rule
                findings["host_simulation"] = {"where": f"simulated:{simulated}", "accuracy": scores}
                scores = on_device["accuracy"]
                entry["reason"] = (
                    f"latency and scores measured on device {device.name} ({on_device.get('runtime')} there); the "
                    f"{simulated} simulation of the same artifact on this host is under host_simulation"
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
        self.ctx.log(
            f"{spec.name}: {self.ctx.task.summary(scores)}, {timing}{' (artifact reused)' if reused else ''}"
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
        c = self.ctx.recipe.check
        self.ctx.log(f"{spec.name}: profiling on device {spec.device} ({c.runs} runs)")
        try:
            result = profile(
                artifact,
                str(spec.device),
                runs=c.runs,
                threads=threads,
                warmup=c.warmup,
                batch=c.batch,
                bundle=self.ctx.agent_bundle,
                runtime=runtime,
            )
        except ProfileError as exc:
            self.ctx.log(f"{spec.name}: device profile failed ({exc})")
            return {"ok": False, "error": exc.message}
        return result.results[0]

    def _layerwise(self, spec: TargetSpec, float_onnx: Path, artifact: Path, x: Inputs) -> dict[str, Any]:
        """The layer-wise comparison of an INT8 artifact with the float ONNX ({} when not comparable)."""
        from edgevit.check import layerwise

        if artifact.suffix not in layerwise.COMPARABLE_SUFFIXES:
            return {}
        try:
            found = layerwise.summary(
                float_onnx, artifact, x[: self.ctx.recipe.check.layerwise_samples], spec.backend
            )
        except Exception as exc:  # a diagnosis must not fail the target it diagnoses
            self.ctx.log(f"{spec.name}: layer-wise comparison failed ({type(exc).__name__}: {exc})")
            return {"layerwise": {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}}
        worst = found["layers"][0]
        self.ctx.log(
            f"{spec.name}: layer-wise, worst quantized layer {worst['layer']} (alone: SQNR "
            f"{worst['local_sqnr_db']:.1f} dB)"
        )
        return {"layerwise": found}
