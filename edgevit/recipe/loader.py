"""Load recipes by built-in name or path, apply ``--set key=value`` overrides, explain errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from edgevit.errors import EdgeVitError, RecipeError
from edgevit.paths import recipes_dir
from edgevit.recipe.schema import Recipe


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names -> files (``recipes/*.yaml``; fragments under ``_units/`` excluded)."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def recipe_path(ref: str | Path) -> Path:
    """Resolve a recipe reference (path or built-in name) to a file."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    named = builtin_recipes().get(str(ref))
    if named is not None:
        return named
    raise RecipeError(
        f"recipe {str(ref)!r} not found",
        f"pass a path to a .yaml file or a built-in name: {', '.join(builtin_recipes()) or '(none)'}",
    )


def _parse_path(key: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in key.split(".") if p != ""]


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML; list items by index: targets.1.threads)."""
    if "=" not in assignment:
        raise RecipeError(f"override {assignment!r} has no '='", "write --set key.path=value")
    key, raw = assignment.split("=", 1)
    parts = _parse_path(key.strip())
    if not parts:
        raise RecipeError(f"override {assignment!r} has an empty key", "write --set key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(str(p) for p in parts[: i + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise RecipeError(f"override {key}: {where} is not an existing list item", "check the index")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"override {key}: {where} is not a mapping", "check the key path")
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise RecipeError(f"override {key}: index {last} does not exist", "check the index")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {key}: parent is not a mapping", "check the key path")


def format_validation_error(exc: ValidationError, data: Any) -> str:
    """Turn pydantic errors into ``stages[0].method: <what>, got <value>`` lines (joined by '; ')."""
    lines = []
    for err in exc.errors():
        path, node = "", data
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
                node = node[part] if isinstance(node, list) and part < len(node) else None
            elif isinstance(node, dict) and part in node:
                path += f".{part}" if path else str(part)
                node = node[part]
            elif isinstance(node, dict) and err["type"] in ("missing", "extra_forbidden"):
                path += f".{part}" if path else str(part)
                node = None
            # else: a union tag (e.g. the stage kind) that pydantic adds to the location; skip it
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; the README lists every recipe key)"
        else:
            msg = describe_rule(err)
        lines.append(f"{path or '(recipe)'}: {msg}")
    return "; ".join(lines)


def describe_rule(err: ErrorDetails) -> str:
    """The rule a value broke and the value (``must be at least 1, got -1``), from one pydantic error."""
    ctx, kind, value = err.get("ctx") or {}, err["type"], err.get("input")
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "greater_than" and whole and isinstance(ctx.get("gt"), int):
        msg = f"must be at least {ctx['gt'] + 1}"
    elif kind in _BOUNDS:
        word, key = _BOUNDS[kind]
        bound = ctx.get(key)
        msg = f"must be {word} {bound:g}" if isinstance(bound, float) else f"must be {word} {bound}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    if kind != "missing" and "input" in err and not isinstance(value, dict | list):
        msg += f", got {value!r}"
    return msg


_BOUNDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def validate_recipe(data: Any, source: str, base_dir: Path) -> Recipe:
    """Validate a parsed recipe mapping, raising RecipeError with field paths."""
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {source} must be a YAML mapping", "see recipes/ for examples")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"recipe {source}: {format_validation_error(exc, data)}") from None
    except EdgeVitError as exc:  # raised from a validator, e.g. an unknown backend or manifest
        raise RecipeError(f"recipe {source}: {exc.message}", exc.fix) from None
    recipe._base_dir = base_dir
    return recipe


def load_recipe(ref: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, override and validate a recipe.

    Args:
        ref: a path to a YAML file or the name of a built-in recipe (``edgevit recipes``).
        overrides: ``key.path=value`` strings applied before validation.
    """
    path = recipe_path(ref)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"recipe {path}{where}: not valid YAML", "fix the syntax") from None
    except OSError as exc:
        raise RecipeError(f"recipe {path} cannot be read ({exc.strerror})", "check the file") from None
    for assignment in overrides:
        if not isinstance(data, dict):
            break
        apply_override(data, assignment)
    return validate_recipe(data, str(path), path.parent)
