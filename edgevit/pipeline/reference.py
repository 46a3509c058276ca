"""The float reference: the model a recipe names, its evaluation set (images, ground truth and the
reference's outputs, as a cached bundle), and what a dense model's build cannot do yet."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgevit.builtin import resolve_builtin
from edgevit.check import accuracy
from edgevit.check.bundle import BundleInputs, Inputs, open_bundle, open_dense, write_bundle
from edgevit.data import open_data
from edgevit.data.source import require_task
from edgevit.data.stream import Images
from edgevit.errors import EdgeVitError, RecipeError
from edgevit.models.load import LoadedModel, load, logits_of
from edgevit.pipeline.context import BuildContext, Log
from edgevit.recipe.schema import DistillStage, QuantizeStage, Recipe
from edgevit.tasks.base import score_batches
from edgevit.workspace import StepResult


def load_reference(recipe: Recipe, log: Log, progress: bool) -> LoadedModel:
    spec = recipe.model
    checkpoint: str | Path | None = spec.checkpoint
    if spec.checkpoint is not None and spec.checkpoint.startswith("builtin:"):
        checkpoint = resolve_builtin(spec.checkpoint.removeprefix("builtin:"), progress, log)
    elif spec.checkpoint is not None:
        path = Path(spec.checkpoint).expanduser()
        checkpoint = path if path.is_absolute() else recipe.base_dir / path
    torch.manual_seed(0)  # a name-only model gets the same random weights every run
    return load(spec.name, checkpoint, num_classes=spec.num_classes, **spec.size_kwargs())


def check_task_recipe(recipe: Recipe, task: str) -> None:
    """Raise, before anything is trained, for what the model's task cannot do: a classification
    model's decoder; a dense model's distillation token (the prune stage itself refuses removing
    blocks a dense head reads, before it scores anything)."""
    dense = task != "classification"
    for i, stage in enumerate(recipe.stages):
        if isinstance(stage, QuantizeStage) and stage.decoder and not dense:
            raise RecipeError(
                f"stages[{i}].decoder: a classification model has no decoder",
                "remove decoder (patch_embed: true quantizes the patch embedding)",
            )
        if isinstance(stage, DistillStage) and stage.distill_token and dense:
            raise RecipeError(
                f"stages[{i}].distill_token is for classification, and the model is a {task} model",
                "set distill_token: false (a dense student learns the teacher's maps through its own head)",
            )


@dataclass
class Evaluation:
    """The evaluation set of a build: images (read a batch at a time from the bundle), ground truth
    (labels or maps), the float reference's outputs and its scores."""

    step: StepResult
    x: BundleInputs
    labels: Inputs  # labels, or a dense task's maps read a batch at a time
    outputs: Inputs  # the reference's logits, or a dense task's outputs read a batch at a time
    top1: float  # classification's reference top-1 (0 for a dense task)
    scores: dict[str, Any]  # the task's headline scores of the reference
    description: str


def evaluation_set(ctx: BuildContext, ref: LoadedModel, weights_sha: str) -> Evaluation:
    """The evaluation images with their ground truth and the reference's outputs: one cached step
    (``eval/bundle.npz``), written batch by batch and read back a batch at a time."""
    r, cfg, task = ctx.recipe, ref.config, ctx.task
    dense = task.name != "classification"
    source = require_task(  # read, never held whole
        open_data(r.data.evaluation, cfg.class_names, r.base_dir, cfg.task), task.name, "data.evaluation"
    )
    if len(source) == 0:
        raise EdgeVitError(f"evaluation data {source.description} is empty", "check data.evaluation")
    batch = r.check.eval_batch

    def make_eval(d: Path) -> None:
        images = Images(source, cfg)
        if dense:  # a dense task's maps are written as they stream by, beside the images
            batches: Iterator[tuple[np.ndarray, ...]] = (
                (x.numpy(), logits_of(ref.model, x.numpy(), batch), y.numpy())
                for x, y in images.in_order(batch)
            )
            write_bundle(d / "bundle.npz", len(images), cfg.input_size, batches)
            return
        pairs = ((x.numpy(), logits_of(ref.model, x.numpy(), batch)) for x, _ in images.in_order(batch))
        write_bundle(d / "bundle.npz", len(images), cfg.input_size, pairs, source.labels)

    step = ctx.ws.step(
        "eval",
        {
            "weights": weights_sha,
            "data": ctx.data_sha256(source, r.data.evaluation),
            "config": cfg.model_dump(),
            "torch": ctx.versions["torch"],
        },
        make_eval,
        {"producer": "data+reference", "data": source.description},
    )
    # the inputs are read a batch at a time from the bundle: a few thousand 224-px images are gigabytes
    labels: Inputs
    outputs: Inputs
    if dense:  # so are a dense task's maps and outputs
        x, labels, outputs = open_dense(step.path("bundle.npz"))
        scores = score_batches(
            task,
            (
                (outputs[i : i + batch], labels[i : i + batch], outputs[i : i + batch])
                for i in range(0, len(x), batch)
            ),
        )
        top1 = 0.0
    else:
        x, labels, outputs = open_bundle(step.path("bundle.npz"))
        scores = task.score(outputs, labels, outputs)
        top1 = accuracy.top1(outputs, labels)
    scores = {k: v for k, v in scores.items() if k in task.headline}
    ctx.log(f"float reference {task.summary(scores)} on {len(labels)} images ({source.description})")
    return Evaluation(step, x, labels, outputs, top1, scores, source.description)
