"""Orchestration: recipe -> float reference -> stages -> ONNX -> per-target lower + check -> report.

The parts, one concept each: ``context`` (what one build's parts share), ``reference`` (the float
model), ``compression`` (prune, distill, equalization, qat as cached steps), ``targets`` (one
target lowered, run, scored and timed), ``float_search`` (the accuracy budget's float layers),
``recovery`` (qat for a target that misses its budget) and ``run`` (the order of it all and the
report).
"""

from __future__ import annotations

from edgevit.pipeline.run import Build, build

__all__ = ["Build", "build"]
