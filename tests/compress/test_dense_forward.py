"""``DenseForward``: the differentiable forward computes the serving model's logits, batched, with gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corral.compress.dense_forward import DenseForward, float_linears
from corral.models.calibration import sequence_logits
from corral.models.registry import model_class
from corral.models.spec import ModelConfig, RopeScaling

BASE = ModelConfig(
    architecture="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=True,
)
CASES = {
    "llama-tied": BASE,
    "llama3-untied": dataclasses.replace(
        BASE, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64), rope_theta=500000.0, tie_word_embeddings=False
    ),
    "qwen2-biases": dataclasses.replace(BASE, architecture="qwen2", attention_bias=True),
}


def _weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    from corral.loader.names import expected_shapes

    generator = torch.Generator().manual_seed(0)
    return {
        name: (1.0 + 0.1 * noise) if "norm" in name else 0.3 * noise
        for name, shape in expected_shapes(config).items()
        for noise in [torch.randn(shape, generator=generator)]
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_equal_the_serving_models(case):
    config = CASES[case]
    weights = _weights(config)
    model = model_class(config)(config).eval()
    model.load_weights(dict(weights))
    sequences = [[(7 * i + 3 * s) % 120 + 3 for i in range(48)] for s in range(3)]
    expected = torch.stack([sequence_logits(model, ids) for ids in sequences])
    got = DenseForward(config, weights, float_linears(weights))(torch.tensor(sequences))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_linear():
    config = BASE
    weights = {name: w.requires_grad_() for name, w in _weights(config).items()}
    logits = DenseForward(config, weights, float_linears(weights))(torch.tensor([[5, 9, 17, 33]]))
    logits.logsumexp(-1).sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights.values())


@pytest.mark.parametrize("case", ["llama-tied", "llama3-untied"])
def test_hidden_states_are_what_the_lm_head_reads(case):
    config = CASES[case]
    weights = _weights(config)
    forward = DenseForward(config, weights, float_linears(weights))
    input_ids = torch.tensor([[5, 9, 17, 33, 2], [7, 7, 1, 90, 64]])
    hidden = forward.hidden_states(input_ids)
    assert hidden.shape == (2, 5, config.hidden_size)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    torch.testing.assert_close(hidden @ head.T, forward(input_ids))
    # after the final norm: each row's RMS is the norm's gain, not the residual stream's scale
    unit = hidden / weights["model.norm.weight"]
    torch.testing.assert_close(unit.pow(2).mean(-1), torch.ones(2, 5), rtol=1e-3, atol=1e-3)
