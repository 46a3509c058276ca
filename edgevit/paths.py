"""Where edgevit finds its shipped recipes, target profiles and data manifests, and its cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def recipes_dir() -> Path:
    """The built-in recipes (``EDGEVIT_RECIPES`` overrides)."""
    return Path(os.environ.get("EDGEVIT_RECIPES", REPO_ROOT / "recipes"))


def targets_dir() -> Path:
    """The device/target profiles (``EDGEVIT_TARGETS`` overrides)."""
    return Path(os.environ.get("EDGEVIT_TARGETS", REPO_ROOT / "targets"))


def calibration_dir() -> Path:
    """The calibration/evaluation data manifests (``EDGEVIT_CALIBRATION`` overrides)."""
    return Path(os.environ.get("EDGEVIT_CALIBRATION", REPO_ROOT / "calibration"))


def cache_dir() -> Path:
    """Cache for trained builtin models (``EDGEVIT_CACHE``, else ``~/.cache/edgevit``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgevit"
    return Path(os.environ.get("EDGEVIT_CACHE", default))
