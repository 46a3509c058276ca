"""edgevit: turn trained Vision Transformers into small, fast, verified edge builds.

``import edgevit`` loads no backend library; names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "EdgeVitError",
    "Recipe",
    "Report",
    "__version__",
    "build",
    "load_model",
    "load_recipe",
]

_LAZY = {
    "build": ("edgevit.pipeline", "build"),
    "load_recipe": ("edgevit.recipe.loader", "load_recipe"),
    "Recipe": ("edgevit.recipe.schema", "Recipe"),
    "Report": ("edgevit.report.document", "Report"),
    "EdgeVitError": ("edgevit.errors", "EdgeVitError"),
    "load_model": ("edgevit.builtin", "load_model"),
}

if TYPE_CHECKING:
    from edgevit.builtin import load_model
    from edgevit.errors import EdgeVitError
    from edgevit.pipeline import build
    from edgevit.recipe.loader import load_recipe
    from edgevit.recipe.schema import Recipe
    from edgevit.report.document import Report


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgevit' has no attribute {name!r}")
