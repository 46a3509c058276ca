"""Recipes: schema and loading."""

from edgevit.recipe.loader import builtin_recipes, load_recipe
from edgevit.recipe.schema import Gates, QuantizeStage, Recipe, TargetSpec

__all__ = ["Gates", "QuantizeStage", "Recipe", "TargetSpec", "builtin_recipes", "load_recipe"]
