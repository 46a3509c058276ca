"""Backends. Each module registers its Target; backend libraries are imported only when used."""

from __future__ import annotations

from edgevit.errors import RecipeError
from edgevit.registry import Registry
from edgevit.targets.base import Availability, LowerRequest, Runner, Target

TARGETS: Registry[Target] = Registry("backend", RecipeError)

# Registration happens on import of each module; these imports load no backend library.
from edgevit.targets import coreml as _cml  # noqa: E402,F401
from edgevit.targets import onnxruntime as _ort  # noqa: E402,F401
from edgevit.targets import openvino as _ov  # noqa: E402,F401
from edgevit.targets import tensorrt as _trt  # noqa: E402,F401
from edgevit.targets import tflite as _tfl  # noqa: E402,F401

__all__ = ["TARGETS", "Availability", "LowerRequest", "Runner", "Target"]
