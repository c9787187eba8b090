"""Slicing a model to a pruned shape: what is removed is exactly what a zeroed or skipped unit contributed,
and the pruned weights hold the parameters the pruned config counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corral.compress.dense_forward import DenseForward, float_linears
from corral.compress.prune import (
    PruneShape,
    apply_plan,
    count_parameters,
    plan_pruning,
    pruned_config,
)
from corral.loader.names import expected_shapes
from corral.models.spec import ModelConfig
from tests.compress.prune_models import BASE, CONFIGS, TOKENS, random_scores, random_weights


def logits(config: ModelConfig, weights: dict[str, torch.Tensor], linear=None) -> torch.Tensor:
    return DenseForward(config, weights, linear or float_linears(weights))(TOKENS)


def prune(config, weights, scores, **shape_changes):
    shape = dataclasses.replace(PruneShape.of(config), **shape_changes)
    return apply_plan(config, weights, plan_pruning(config, scores, shape))


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_pruning_nothing_keeps_the_logits(case):
    config = CONFIGS[case]
    weights = random_weights(config)
    new_config, new_weights = prune(config, weights, random_scores(config))
    assert new_config.hidden_size == config.hidden_size and set(new_weights) == set(weights)
    assert torch.equal(logits(new_config, new_weights), logits(config, weights))


def _zero_ffn_channels(config, weights, scores):
    dropped = [3, 40, 77]
    for layer in range(config.num_hidden_layers):
        weights[f"model.layers.{layer}.mlp.down_proj.weight"][:, dropped] = 0
        scores.ffn_channels[layer, dropped] = 0
    return {"intermediate_size": config.intermediate_size - len(dropped)}


def _zero_query_heads_per_group(config, weights, scores):
    # one query head of each group: its o_proj columns carry nothing
    for layer in range(config.num_hidden_layers):
        for head in (1, 2, 5):  # groups (0, 1), (2, 3), (4, 5)
            weights[f"model.layers.{layer}.self_attn.o_proj.weight"][:, head * 16 : (head + 1) * 16] = 0
            scores.query_heads[layer, head] = 0
    return {"num_attention_heads": 3}


def _zero_kv_group(config, weights, scores):
    for layer in range(config.num_hidden_layers):
        weights[f"model.layers.{layer}.self_attn.o_proj.weight"][:, 32:64] = 0  # queries 2 and 3: group 1
        scores.query_heads[layer, 2:4] = 0
    return {"num_attention_heads": 4, "num_key_value_heads": 2}


def _zero_hidden_channels(config, weights, scores):
    # a residual channel that nothing writes stays zero: embedding column, o_proj and down_proj rows
    dropped = [0, 9, 33, 50]
    weights["model.embed_tokens.weight"][:, dropped] = 0
    for layer in range(config.num_hidden_layers):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            weights[f"model.layers.{layer}.{name}.weight"][dropped] = 0
    scores.hidden_channels[dropped] = 0
    return {"hidden_size": config.hidden_size - len(dropped)}


ZEROINGS = {"ffn-channels": _zero_ffn_channels, "query-heads-per-group": _zero_query_heads_per_group,
            "whole-kv-group": _zero_kv_group, "hidden-channels": _zero_hidden_channels}


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("zeroing", sorted(ZEROINGS))
def test_pruning_zeroed_units_keeps_the_logits(case, zeroing):
    config = CONFIGS[case]
    weights, scores = random_weights(config), random_scores(config)
    shape_changes = ZEROINGS[zeroing](config, weights, scores)
    expected = logits(config, weights)
    new_config, new_weights = prune(config, weights, scores, **shape_changes)
    assert dataclasses.asdict(PruneShape.of(new_config)) == {**dataclasses.asdict(PruneShape.of(config)), **shape_changes}
    # float32 rounding only: the norms' rescaling by sqrt(64 / 60) is not exact in binary
    torch.testing.assert_close(logits(new_config, new_weights), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("removed", [0, 1, 2])
def test_removing_a_layer_equals_skipping_it(removed):
    config, weights, scores = BASE, random_weights(BASE), random_scores(BASE)
    scores.layers[removed] = 0
    float_linear = float_linears(weights)

    def skipping(index: int, name: str, x: torch.Tensor) -> torch.Tensor:
        out = float_linear(index, name, x)
        # the layer's two writes to the residual stream: without them it passes its input through
        return torch.zeros_like(out) if index == removed and name in ("self_attn.o_proj", "mlp.down_proj") else out

    new_config, new_weights = prune(config, weights, scores, num_hidden_layers=2)
    torch.testing.assert_close(logits(new_config, new_weights), logits(config, weights, skipping), rtol=1e-5, atol=1e-5)


SHAPES = [
    PruneShape(3, 96, 6, 3, 64),
    PruneShape(2, 64, 4, 2, 48),
    PruneShape(1, 17, 3, 3, 33),
    PruneShape(3, 96, 2, 1, 64),
]


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.describe().replace(" ", ","))
def test_parameter_counts_match_the_config(case, shape):
    config = CONFIGS[case]
    new_config, new_weights = apply_plan(config, random_weights(config),
                                         plan_pruning(config, random_scores(config), shape))
    assert new_config == pruned_config(config, shape)
    stored = sum(tensor.numel() for tensor in new_weights.values())
    assert stored == count_parameters(new_config)
    assert stored == sum(torch.Size(s).numel() for s in expected_shapes(new_config).values())
    assert {name: tuple(t.shape) for name, t in new_weights.items()} == expected_shapes(new_config)
