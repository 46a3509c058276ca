"""Calibration/evaluation data manifests: small YAML files in calibration/ naming a DataSpec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgevit.errors import RecipeError
from edgevit.paths import calibration_dir


def manifest_path(ref: str) -> Path:
    """Resolve a manifest reference: a path to a .yaml file, or a name in calibration/."""
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return path
    return calibration_dir() / f"{ref}.yaml"


def read_manifest(ref: str) -> dict[str, Any]:
    """Read a manifest into the fields of a DataSpec (unknown keys are caught by DataSpec)."""
    path = manifest_path(ref)
    if not path.is_file():
        names = sorted(p.stem for p in calibration_dir().glob("*.yaml"))
        raise RecipeError(
            f"data manifest {ref!r} not found ({path})", f"use one of {names} or a path to a .yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"data manifest {path} is not valid YAML ({exc})", "fix the file") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"data manifest {path} must be a mapping", "see calibration/README.md")
    raw.pop("description", None)
    return raw
