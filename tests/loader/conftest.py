"""Fixtures for loader tests: tiny random llama/qwen2 configs and weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from corral.loader.names import expected_shapes
from corral.models.spec import ModelConfig

TINY_LLAMA = ModelConfig(
    architecture="llama",
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=2.0**-17,  # exact in float32, so it survives a GGUF round trip unchanged
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_ids=(2,),
)


def random_state_dict(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform [-1, 1) weights for every tensor of ``config`` (norms around 1)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, shape in expected_shapes(config).items():
        values = torch.rand(shape, generator=generator) * 2 - 1
        state_dict[name] = values * 0.1 + 1 if "norm" in name else values
    return state_dict


@pytest.fixture
def tiny_config() -> Callable[..., ModelConfig]:
    """``tiny_config(architecture="llama", **overrides)`` -> a 2-layer ModelConfig."""

    def make(architecture: str = "llama", **overrides: object) -> ModelConfig:
        if architecture == "qwen2":
            overrides = {"attention_bias": True, **overrides}
        return dataclasses.replace(TINY_LLAMA, architecture=architecture, **overrides)

    return make


@pytest.fixture
def random_weights() -> Callable[..., dict[str, torch.Tensor]]:
    """``random_weights(config, seed=0)`` -> a random state dict under HF names."""
    return random_state_dict
