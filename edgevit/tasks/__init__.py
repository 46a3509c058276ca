"""Tasks: classification, segmentation, depth, embedding, detection. Each owns its output layout, loss, scores against
ground truth and the float model, gates and report columns; the rest of edgevit asks the task."""

from __future__ import annotations

from edgevit.errors import RecipeError
from edgevit.registry import Registry
from edgevit.tasks.base import GateSpec, Metric, Scorer, Task
from edgevit.tasks.classification import Classification
from edgevit.tasks.depth import Depth
from edgevit.tasks.detection import Detection
from edgevit.tasks.embedding import Embedding
from edgevit.tasks.segmentation import Segmentation

TASKS: Registry[Task] = Registry("task", RecipeError)
for _task in (Classification(), Segmentation(), Depth(), Embedding(), Detection()):
    TASKS.add(_task.name, _task)

__all__ = ["TASKS", "GateSpec", "Metric", "Scorer", "Task"]
