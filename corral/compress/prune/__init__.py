"""Structured pruning (``corral prune``): layers, FFN channels, attention heads and hidden channels chosen by
importance from one calibration pass, written as a plain Llama checkpoint."""

from corral.compress.prune.apply import PrunePlan, apply_plan, plan_pruning
from corral.compress.prune.importance import ImportanceScores, compute_importance
from corral.compress.prune.pipeline import PruneReport, PruneRequest, prune_checkpoint
from corral.compress.prune.search import Candidate, SearchSpace, search_shapes
from corral.compress.prune.shape import (
    PruneShape,
    ShapeConstraints,
    count_parameters,
    pruned_config,
    resolve_shape,
    weight_megabytes,
)

__all__ = [
    "Candidate",
    "ImportanceScores",
    "PrunePlan",
    "PruneReport",
    "PruneRequest",
    "PruneShape",
    "SearchSpace",
    "ShapeConstraints",
    "apply_plan",
    "compute_importance",
    "count_parameters",
    "plan_pruning",
    "prune_checkpoint",
    "pruned_config",
    "resolve_shape",
    "search_shapes",
    "weight_megabytes",
]
