"""The accuracy-budget search: the fewest layers to keep float so an INT8 target meets its budget.

One unit with a small interface. The caller (the pipeline) supplies how to build and score a
candidate (``attempt``: extra float layers → the scores on the evaluation set, and a handle on the
build) and how to rank layers once the all-INT8 candidate misses (``rank``); the search does the
rest and returns the report's ``fallback`` entry and the chosen candidate's handle.

Walk: quantize everything in scope; if the budget is missed, walk the ranking, keeping each layer
float if that brings the scores closer to the budget (``AccuracyBudget.shortfall``) and leaving it
quantized if not (errors of different layers can cancel), until the budget is met, or
``max_float_layers`` are kept, or the ranking ends (best effort: the closest candidate, reported).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from edgevit.quant.sensitivity import Ranking
from edgevit.quant.settings import AccuracyBudget

Handle = TypeVar("Handle")


class BudgetSearch(Generic[Handle]):
    """One target's search (see the module)."""

    def __init__(
        self,
        budget: AccuracyBudget,
        attempt: Callable[[list[str]], tuple[dict[str, Any], Handle]],
        rank: Callable[[Handle], Ranking],
        log: Callable[[str], None],
        name: str = "",
        describe: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        self.budget, self._attempt, self._rank, self._log, self.name = budget, attempt, rank, log, name
        self._describe = describe or _classification_words
        self.tried: list[dict[str, Any]] = []

    def _try(self, extra: list[str]) -> Handle:
        scores, handle = self._attempt(extra)
        met = self.budget.met(scores)
        short = self.budget.shortfall(scores)
        shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in scores.items()}
        self.tried.append({"float_layers": extra, **shown, "met": met, "shortfall": round(short, 4)})
        self._log(
            f"{self.name}: fallback with {len(extra)} float layer(s): {self._describe(scores)}"
            f"{' (budget met)' if met else ''}"
        )
        return handle

    def run(self) -> tuple[dict[str, Any], Handle]:
        """Search; return the report's ``fallback`` entry and the chosen candidate's handle."""
        chosen_handle = self._try([])
        out: dict[str, Any] = {"applied": True, "budget": self.budget.model_dump(), "tried": self.tried}
        if self.tried[-1]["met"]:
            return {**out, "met": True, "float_layers": []}, chosen_handle
        started = time.perf_counter()
        ranking = self._rank(chosen_handle)
        seconds = round(time.perf_counter() - started, 2)
        self._log(
            f"{self.name}: ranked {len(ranking.layers)} layers ({ranking.method}) in {seconds:.1f} s; most "
            "sensitive: " + ", ".join(ranking.names[:4])
        )
        out.update(ranking=ranking.method, ranking_seconds=seconds, sensitivity=ranking.layers)
        if ranking.note:
            out["ranking_note"] = ranking.note
        chosen: list[str] = []
        best = self.tried[0]
        for layer in ranking.names:
            if len(chosen) >= self.budget.max_float_layers:
                break
            handle = self._try([*chosen, layer])
            last = self.tried[-1]
            if last["met"]:
                return {**out, "met": True, "float_layers": last["float_layers"]}, handle
            if last["shortfall"] < best["shortfall"] - 1e-6:
                chosen, best, chosen_handle = last["float_layers"], last, handle
            else:
                last["rejected"] = True
                self._log(f"{self.name}: keeping {layer} float did not help; it stays quantized")
        self._log(f"{self.name}: accuracy budget not met with {len(chosen)} float layers (best effort kept)")
        return {**out, "met": False, "float_layers": chosen}, chosen_handle


def _classification_words(scores: dict[str, Any]) -> str:
    return f"drop {scores['top1_drop']:+.2f}, SQNR {scores['sqnr_db']:.1f} dB, agreement {scores['agreement']:.4f}"
