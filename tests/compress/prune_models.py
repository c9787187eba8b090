"""A tiny GQA Llama (three variants), random weights and random importance scores for the prune tests."""

from __future__ import annotations

import dataclasses

import torch

from corral.compress.prune import ImportanceScores
from corral.loader.names import expected_shapes
from corral.models.spec import ModelConfig

BASE = ModelConfig(
    architecture="llama", vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
    num_attention_heads=6, num_key_value_heads=3, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
CONFIGS = {
    "llama-tied": BASE,
    "llama-untied": dataclasses.replace(BASE, tie_word_embeddings=False),
    "qwen2-biases": dataclasses.replace(BASE, architecture="qwen2", attention_bias=True),
}
TOKENS = torch.tensor([[(5 * i + 7 * s) % 90 + 3 for i in range(40)] for s in range(2)])


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (1.0 + 0.2 * noise) if "norm" in name else 0.4 * noise
        for name, shape in expected_shapes(config).items()
        for noise in [torch.randn(shape, generator=generator)]
    }


def random_scores(config: ModelConfig, seed: int = 1) -> ImportanceScores:
    generator = torch.Generator().manual_seed(seed)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    return ImportanceScores(
        layers=1 + torch.rand(layers, generator=generator),
        ffn_channels=1 + torch.rand(layers, config.intermediate_size, generator=generator),
        query_heads=1 + torch.rand(layers, heads, generator=generator),
        hidden_channels=1 + torch.rand(config.hidden_size, generator=generator),
        num_tokens=1,
    )
