"""Structured pruning of ViT-Plus models: attention heads, MLP width and whole blocks."""

from edgevit.pruning.plan import PruneResult, prune

__all__ = ["PruneResult", "prune"]
