"""Recovering an INT8 target that misses its accuracy budget with qat."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from edgevit import scoring
from edgevit.check import accuracy
from edgevit.check.bundle import Inputs
from edgevit.devices import resolve_device
from edgevit.errors import EdgeVitError
from edgevit.pipeline.compression import Compression
from edgevit.pipeline.context import BuildContext
from edgevit.pipeline.targets import TargetChecker, lower_key
from edgevit.recipe.schema import TargetSpec
from edgevit.targets import TARGETS, LowerRequest
from edgevit.tasks.base import score_run
from edgevit.workspace import StepResult


class Recovery:
    """An INT8 target under ``accuracy_budget.recover: qat | qat_then_float``: post-training INT8
    first, qat against the target's grid only when that misses the budget."""

    def __init__(self, ctx: BuildContext, checker: TargetChecker, compression: Compression) -> None:
        self.ctx = ctx
        self.checker = checker
        self.compression = compression

    def recover(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: Inputs,
        src_logits: Inputs,
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
            return self.checker.check(spec, plain, onnx_sha, *args), None
        ptq, step = scored
        task = self.ctx.task
        record: dict[str, Any] = {
            "applied": True,
            "budget": budget.model_dump(),
            "recover": budget.recover,
            "post_training": {**scoring.rounded(ptq), "step": step.name},
        }
        if budget.met(ptq):
            self.ctx.log(f"{spec.name}: post-training INT8 meets the accuracy budget: no qat needed")
            entry = self.checker.check(spec, plain, onnx_sha, *args, prebuilt=step)
            entry["fallback"] = {**record, "met": True, "needed": "none", "float_layers": [], "tried": []}
            return entry, None
        words = (
            f"drop {ptq['top1_drop']:+.2f}, SQNR {ptq['sqnr_db']:.1f} dB"
            if task.name == "classification"
            else task.summary(ptq)
        )
        self.ctx.log(
            f"{spec.name}: post-training INT8 misses the accuracy budget ({words}): recovering with qat"
        )
        onnx_sha, trained = self.compression.qat(
            spec, request, onnx_sha, calib_sha, x_eval, labels, src_logits
        )
        qat_logits = trained.pop("float_logits", None)
        if budget.recover == "qat":
            request = replace(request, quantize=plain.quantize)
        entry = self.checker.check(spec, request, onnx_sha, *args, qat_logits)
        acc = entry.get("accuracy")
        if entry["status"] != "ok" or acc is None:
            return entry, trained
        searched = entry.get("fallback") or {}
        floated = list(searched.get("float_layers") or [])
        met = budget.met(acc)
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
        self.ctx.log(
            f"{spec.name}: after qat{' and float layers' if floated else ''} the budget is {verdict}"
        )
        return entry, trained

    def _post_training(
        self,
        spec: TargetSpec,
        request: LowerRequest,
        onnx_sha: str,
        calib_sha: str | None,
        x_eval: Inputs,
        labels: Inputs,
        src_logits: Inputs,
    ) -> tuple[dict[str, Any], StepResult] | None:
        """Build ``request`` (post-training INT8) as a cached step and score it on the evaluation
        set by the task (batch by batch for a dense task); None when this host cannot build or run it."""
        target = TARGETS.get(spec.backend)
        avail = target.availability()
        if not avail.available:
            return None
        device = resolve_device(spec.device)
        threads = spec.threads or device.threads or self.ctx.recipe.check.threads
        try:
            step = self.ctx.ws.step(
                f"search/{spec.name}/post-training",
                lower_key(spec, target, avail.versions, onnx_sha, calib_sha, request),
                lambda d: target.lower(request, d),
                {"producer": f"targets.{spec.backend} (post-training INT8, accuracy budget)"},
            )
            artifact = step.path(target.artifact_name)
            batch = self.ctx.recipe.check.eval_batch
            with target.runner(artifact, threads, request.model_config.input_size, device) as runner:
                if self.ctx.task.name == "classification":
                    scores = asdict(accuracy.compare(runner.infer_all(x_eval, batch), labels, src_logits))
                else:
                    scores, _ = score_run(self.ctx.task, runner.infer, x_eval, labels, src_logits, batch)
        except EdgeVitError as exc:  # NotCheckable included: the target's own step reports it
            self.ctx.log(f"{spec.name}: post-training INT8 not scored ({exc})")
            return None
        return scores, step
