"""The accuracy budget's search: which layers an INT8 target keeps float."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.check import accuracy
from edgevit.check.bundle import Inputs
from edgevit.errors import EdgeVitError
from edgevit.models.load import load
from edgevit.pipeline.context import BuildContext
from edgevit.quant.sensitivity import Ranking
from edgevit.quant.settings import BUDGET_LIMITS
from edgevit.quant.simulate import Scope
from edgevit.recipe.schema import TargetSpec
from edgevit.stages.equalize import scheme_for
from edgevit.targets import TARGETS, LowerRequest
from edgevit.tasks.base import score_run
from edgevit.workspace import StepResult


class FloatSearch:
    """The accuracy budget's float-layer search for one INT8 target (edgevit.quant.budget), with
    its candidates as cached build steps."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def run(
        self,
        spec: TargetSpec,
        target: Any,
        request: LowerRequest,
        key_for: Callable[[LowerRequest], dict[str, Any]],
        device: Any,
        threads: int,
        x_eval: Inputs,
        labels: Inputs,
        src_logits: Inputs,
    ) -> tuple[dict[str, Any], StepResult]:
        """The accuracy-budget search (:mod:`edgevit.quant.budget`) for one INT8 target: candidates
        are cached build steps scored on the evaluation set; the ranking is the budget's
        ``ranking`` (:mod:`edgevit.quant.sensitivity`) on calibration images."""
        from edgevit.quant.budget import BudgetSearch

        q = request.quantize
        assert q is not None and q.accuracy_budget is not None
        r = self.ctx.recipe

        def candidate(name: str, extra: list[str]) -> tuple[StepResult, Path]:
            layers = sorted(set(q.float_layers) | set(extra))
            req = replace(
                request, quantize=q.model_copy(update={"float_layers": layers, "accuracy_budget": None})
            )
            step = self.ctx.ws.step(
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

        task = self.ctx.task
        scored = {m.key for m in task.metrics}
        valid = [k for k, (key, _, _) in BUDGET_LIMITS.items() if key in scored]
        unknown = [k for k in q.accuracy_budget.limits() if k not in valid]
        if unknown:
            raise EdgeVitError(
                f"accuracy_budget.{unknown[0]} does not apply to a {task.name} model",
                f"use {', '.join(valid)}",
            )

        def attempt(extra: list[str]) -> tuple[dict[str, Any], StepResult]:
            nonlocal tried
            step, artifact = candidate(str(tried), extra)
            tried += 1
            if task.name == "classification":
                return asdict(accuracy.compare(infer(artifact, x_eval), labels, src_logits)), step
            with target.runner(artifact, threads, request.model_config.input_size, device) as runner:
                scores, _ = score_run(task, runner.infer, x_eval, labels, src_logits, r.check.eval_batch)
            return scores, step

        # Rank on calibration images (not the evaluation set the budget and gates are checked on).
        images = request.calibration if request.calibration is not None else x_eval
        images = images[: q.accuracy_budget.ranking_samples]

        def rank(first: StepResult) -> Ranking:
            artifact = first.path(target.artifact_name)
            return self._ranking(spec, target, request, artifact, images, candidate, infer)

        words = None if task.name == "classification" else task.summary
        return BudgetSearch(q.accuracy_budget, attempt, rank, self.ctx.log, spec.name, words).run()

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
                request.onnx_path,
                artifact,
                images[: self.ctx.recipe.check.layerwise_samples or 16],
                spec.backend,
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
            reference = runner.infer_all(images, self.ctx.recipe.check.eval_batch)
        self.ctx.log(f"{spec.name}: measuring the sensitivity of {len(local)} layers (one build each)")
        found = sensitivity.measured(
            local,
            reference,
            infer(artifact, images),
            lambda i, name: infer(candidate(f"sensitivity/{i}", [name])[1], images),
        )
        return found if note is None else replace(found, note=note)
