"""Turning constraints into a shape: explicit dimensions, impossible ones refused, and the search under a
parameter budget."""

from __future__ import annotations

import pytest

from corral.compress.prune import (
    PruneShape,
    SearchSpace,
    ShapeConstraints,
    count_parameters,
    pruned_config,
    resolve_shape,
    search_shapes,
)
from corral.errors import ConfigError
from tests.compress.prune_models import BASE, random_scores


def test_heads_alone_prune_evenly_per_group_or_whole_groups():
    # BASE: 6 query heads in 3 groups of 2
    assert resolve_shape(BASE, ShapeConstraints(num_attention_heads=3)) == PruneShape(3, 96, 3, 3, 64)
    assert resolve_shape(BASE, ShapeConstraints(num_attention_heads=4)) == PruneShape(3, 96, 4, 2, 64)
    assert resolve_shape(BASE, ShapeConstraints(num_key_value_heads=1)) == PruneShape(3, 96, 2, 1, 64)
    assert resolve_shape(BASE, ShapeConstraints(num_attention_heads=2, num_key_value_heads=2)) == PruneShape(3, 96, 2, 2, 64)


@pytest.mark.parametrize(("constraints", "message"), [
    (ShapeConstraints(num_attention_heads=5), "--heads 5: neither a multiple"),
    (ShapeConstraints(num_attention_heads=4, num_key_value_heads=3), "not a multiple of the 3 KV heads"),
    (ShapeConstraints(num_attention_heads=6, num_key_value_heads=2), "needs 3 query heads per group"),
    (ShapeConstraints(hidden_size=65), "--hidden-size 65 is outside 1..64"),
    (ShapeConstraints(num_hidden_layers=0), "--layers 0 is outside"),
    (ShapeConstraints(intermediate_size=97), "--ffn-size 97"),
    (ShapeConstraints(num_key_value_heads=4), "--kv-heads 4"),
])
def test_impossible_shapes_are_refused(constraints, message):
    with pytest.raises(ConfigError, match=message):
        resolve_shape(BASE, constraints)


SPACE = SearchSpace(width_step=16, max_width_pruning=0.5, max_depth_pruning=0.7)


def test_search_keeps_shapes_that_fit_and_use_the_budget():
    budget = int(0.7 * count_parameters(BASE))
    candidates = search_shapes(BASE, random_scores(BASE), budget, SPACE)
    sizes = [c.num_parameters for c in candidates]
    assert candidates and max(sizes) <= budget and min(sizes) >= (1 - SPACE.budget_slack) * max(sizes)
    assert all(count_parameters(pruned_config(BASE, c.shape)) == c.num_parameters for c in candidates)
    losses = [c.importance_lost for c in candidates]
    assert losses == sorted(losses) and 0 < losses[0] < 1
    # each shape within the bounds: widths on the grid or full, at most half of each width gone
    for c in candidates:
        assert c.shape.hidden_size in (32, 48, 64) and c.shape.intermediate_size in (48, 64, 80, 96)
        assert c.shape.num_hidden_layers >= 1 and c.shape.num_key_value_heads >= 2


def test_search_keeps_explicit_dimensions_fixed():
    budget = int(0.6 * count_parameters(BASE))
    candidates = search_shapes(BASE, random_scores(BASE), budget, SPACE, ShapeConstraints(hidden_size=48))
    assert candidates and {c.shape.hidden_size for c in candidates} == {48}


def test_a_budget_below_the_embeddings_is_refused():
    embeddings = BASE.vocab_size * BASE.hidden_size
    with pytest.raises(ConfigError, match="no shape within the search bounds has at most"):
        search_shapes(BASE, random_scores(BASE), embeddings // 2, SPACE)
