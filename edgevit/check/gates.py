"""Gates: limits on each target's measured numbers that decide the build's exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgevit.recipe.schema import Gates
from edgevit.tasks import TASKS, Task

# gate name -> (where the value lives in a target's result, "max" or "min")
_GATES: dict[str, tuple[tuple[str, str], str]] = {
    "max_top1_drop": (("accuracy", "top1_drop"), "max"),
    "min_agreement": (("accuracy", "agreement"), "min"),
    "min_cosine": (("accuracy", "cosine"), "min"),
    "max_latency_p50_ms": (("latency_ms", "p50"), "max"),
    "max_latency_p90_ms": (("latency_ms", "p90"), "max"),
}


@dataclass(frozen=True)
class GateResult:
    """One gate applied to one target."""

    target: str
    name: str
    limit: float
    value: float | None
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def evaluate_stages(stages: list[dict[str, Any]], gates: Gates, task: Task | None = None) -> list[GateResult]:
    """Apply the task's compression gate (``max_compression_top1_drop``; ``_miou_drop``;
    ``_absrel_increase``) to the float model the last prune/distill stage made."""
    spec = (task or TASKS.get("classification")).compression_gate
    limit = getattr(gates, spec.name)
    if not stages or limit is None:
        return []
    last = stages[-1]
    value = float(last[spec.key])
    return [GateResult(f"stage:{last['step']}", spec.name, limit, value, value <= limit + 1e-9)]


def _table(task: Task | None) -> dict[str, tuple[tuple[str, str], str]]:
    """The gates that apply to a task's targets: its own and the latency gates."""
    if task is None:
        return _GATES
    latency = {k: v for k, v in _GATES.items() if v[0][0] == "latency_ms"}
    return {**{g.name: (("accuracy", g.key), g.kind) for g in task.gates}, **latency}


def evaluate(target: dict[str, Any], gates: Gates, task: Task | None = None) -> list[GateResult]:
    """Apply ``gates`` to one target's result dict (as written in report.json); with ``task``, only
    the task's own gates and the latency gates (a segmentation target has no top-1 to limit)."""
    results = []
    for name, ((section, key), kind) in _table(task).items():
        limit = getattr(gates, name)
        if limit is None:
            continue
        if target.get("status") != "ok":
            results.append(
                GateResult(
                    target["name"],
                    name,
                    limit,
                    None,
                    not gates.fail_on_skipped and target.get("status") == "skipped",
                    f"target {target.get('status')}",
                )
            )
            continue
        value = (target.get(section) or {}).get(key)
        if value is None:
            results.append(
                GateResult(target["name"], name, limit, None, False, f"{section}.{key} not measured")
            )
            continue
        # Tiny tolerance so that a drop of exactly the limit, printed with rounding, passes.
        passed = value <= limit + 1e-9 if kind == "max" else value >= limit - 1e-9
        results.append(GateResult(target["name"], name, limit, float(value), passed))
    return results
