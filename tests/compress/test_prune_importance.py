"""Importance scores: a unit that contributes nothing scores zero (so it is pruned first), and the scores
are cached by model and calibration text."""

from __future__ import annotations

import torch

from corral.compress.prune import compute_importance
from corral.compress.prune.cache import load_or_compute, scores_key
from tests.compress.prune_models import BASE, random_weights

CALIBRATION = torch.tensor([[(11 * i + 5 * s) % 90 + 3 for i in range(48)] for s in range(2)])


def test_silent_units_score_zero():
    config, weights = BASE, random_weights(BASE)
    weights["model.layers.1.mlp.gate_proj.weight"][[7, 50]] = 0  # silu(0) * up = 0: channels 7 and 50 never fire
    weights["model.layers.2.self_attn.v_proj.weight"][16:32] = 0  # KV group 1 reads zero values
    weights["model.layers.0.self_attn.o_proj.weight"][:] = 0  # layer 0 writes nothing to the stream
    weights["model.layers.0.mlp.down_proj.weight"][:] = 0
    dead_channels = [4, 60]  # nothing writes these residual channels, so every norm outputs zero there
    weights["model.embed_tokens.weight"][:, dead_channels] = 0
    for layer in range(config.num_hidden_layers):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            weights[f"model.layers.{layer}.{name}.weight"][dead_channels] = 0

    scores = compute_importance(config, weights, CALIBRATION)

    assert scores.num_tokens == CALIBRATION.numel()
    assert set(torch.nonzero(scores.ffn_channels[1] == 0).flatten().tolist()) == {7, 50}
    assert (scores.ffn_channels[2] > 0).all()
    assert scores.query_heads[2].tolist()[2:4] == [0.0, 0.0] and (scores.query_heads[2, [0, 1, 4, 5]] > 0).all()
    assert scores.kv_groups(3)[2].argmin() == 1
    assert set(torch.nonzero(scores.hidden_channels == 0).flatten().tolist()) == set(dead_channels)
    assert abs(float(scores.layers[0])) < 1e-6 and (scores.layers[1:] > 1e-3).all()


def test_scores_are_cached_by_model_and_calibration(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"stand-in for a checkpoint")
    calls = []

    def compute():
        calls.append(1)
        return compute_importance(BASE, random_weights(BASE), CALIBRATION[:, :16])

    key = scores_key(str(model), CALIBRATION)
    first, cached_first = load_or_compute(str(tmp_path / "cache"), key, compute)
    second, cached_second = load_or_compute(str(tmp_path / "cache"), key, compute)
    assert (cached_first, cached_second, len(calls)) == (False, True, 1)
    for name, tensor in first.tensors().items():
        assert torch.equal(second.tensors()[name], tensor), name
    assert second.num_tokens == first.num_tokens
    assert scores_key(str(model), CALIBRATION[:, :40]) != key  # other calibration text
    model.write_bytes(b"another checkpoint, rewritten in place")
    assert scores_key(str(model), CALIBRATION) != key
