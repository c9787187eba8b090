"""The shape a pruned model keeps, its parameter count and size, and the user's constraints turned into one.

A shape is uniform across layers (one FFN width, one head layout), as a plain Llama config requires.
Attention keeps ``num_key_value_heads`` whole GQA groups with ``num_attention_heads / num_key_value_heads``
query heads in each; ``head_dim`` never changes (RoPE is defined per head).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from corral.errors import ConfigError
from corral.models.spec import ModelConfig


@dataclass(frozen=True)
class PruneShape:
    """The dimensions of a pruned model, each at most the original's."""

    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_size: int

    @classmethod
    def of(cls, config: ModelConfig) -> PruneShape:
        return cls(config.num_hidden_layers, config.intermediate_size, config.num_attention_heads,
                   config.num_key_value_heads, config.hidden_size)

    def describe(self) -> str:
        return (f"layers={self.num_hidden_layers} ffn={self.intermediate_size} heads={self.num_attention_heads} "
                f"kv_heads={self.num_key_value_heads} hidden={self.hidden_size}")


@dataclass(frozen=True)
class ShapeConstraints:
    """What the user asked for; None leaves that dimension as the model has it."""

    num_hidden_layers: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    hidden_size: int | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in vars(self).values())


def check_shape(config: ModelConfig, shape: PruneShape) -> None:
    """Raise ``ConfigError`` unless ``shape`` is a sub-shape of ``config`` that a Llama config can express."""
    limits = {
        "--layers": (shape.num_hidden_layers, config.num_hidden_layers),
        "--ffn-size": (shape.intermediate_size, config.intermediate_size),
        "--heads": (shape.num_attention_heads, config.num_attention_heads),
        "--kv-heads": (shape.num_key_value_heads, config.num_key_value_heads),
        "--hidden-size": (shape.hidden_size, config.hidden_size),
    }
    for flag, (value, original) in limits.items():
        if not 1 <= value <= original:
            raise ConfigError(f"{flag} {value} is outside 1..{original} (the model's size)")
    if shape.num_attention_heads % shape.num_key_value_heads:
        raise ConfigError(f"--heads {shape.num_attention_heads} is not a multiple of the "
                          f"{shape.num_key_value_heads} KV heads kept")
    queries_per_kv = shape.num_attention_heads // shape.num_key_value_heads
    if queries_per_kv > config.num_queries_per_kv:
        raise ConfigError(f"--heads {shape.num_attention_heads} over {shape.num_key_value_heads} KV heads needs "
                          f"{queries_per_kv} query heads per group, but the model's groups hold "
                          f"{config.num_queries_per_kv}")


def resolve_shape(config: ModelConfig, constraints: ShapeConstraints) -> PruneShape:
    """The shape the explicit constraints ask for. ``--heads`` alone keeps every KV group and prunes query
    heads evenly in each where it can (``heads`` a multiple of the group count), else keeps whole groups;
    ``--kv-heads`` alone keeps that many whole groups."""
    heads, kv_heads = constraints.num_attention_heads, constraints.num_key_value_heads
    if heads is not None and kv_heads is None:
        if heads % config.num_key_value_heads == 0:
            kv_heads = config.num_key_value_heads
        elif heads % config.num_queries_per_kv == 0:
            kv_heads = heads // config.num_queries_per_kv
        else:
            raise ConfigError(
                f"--heads {heads}: neither a multiple of the {config.num_key_value_heads} KV groups (query heads "
                f"evenly per group) nor of the {config.num_queries_per_kv} query heads per group (whole groups); "
                "add --kv-heads to say which"
            )
    elif kv_heads is not None and heads is None:
        if not 1 <= kv_heads <= config.num_key_value_heads:
            raise ConfigError(f"--kv-heads {kv_heads} is outside 1..{config.num_key_value_heads} (the model's size)")
        heads = kv_heads * config.num_queries_per_kv
    full = PruneShape.of(config)
    shape = PruneShape(
        num_hidden_layers=_or(constraints.num_hidden_layers, full.num_hidden_layers),
        intermediate_size=_or(constraints.intermediate_size, full.intermediate_size),
        num_attention_heads=_or(heads, full.num_attention_heads),
        num_key_value_heads=_or(kv_heads, full.num_key_value_heads),
        hidden_size=_or(constraints.hidden_size, full.hidden_size),
    )
    check_shape(config, shape)
    return shape


def pruned_config(config: ModelConfig, shape: PruneShape) -> ModelConfig:
    """``config`` at ``shape``. ``head_dim`` is pinned (hidden / heads changes), and ``rms_norm_eps`` is scaled
    with the hidden width so that each norm stays the same function of the kept channels (``apply.py``)."""
    return replace(
        config,
        num_hidden_layers=shape.num_hidden_layers,
        intermediate_size=shape.intermediate_size,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        hidden_size=shape.hidden_size,
        head_dim=config.head_size,
        rms_norm_eps=config.rms_norm_eps * config.hidden_size / shape.hidden_size,
    )


def count_parameters(config: ModelConfig) -> int:
    """Parameters of ``config``'s checkpoint: a tied LM head counted once, as it is stored."""
    hidden, head_size = config.hidden_size, config.head_size
    q_size, kv_size = config.num_attention_heads * head_size, config.num_key_value_heads * head_size
    attention = 2 * hidden * q_size + 2 * hidden * kv_size + (q_size + 2 * kv_size) * config.attention_bias
    mlp = 3 * hidden * config.intermediate_size
    per_layer = attention + mlp + 2 * hidden
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    return embeddings + hidden + config.num_hidden_layers * per_layer


def weight_megabytes(config: ModelConfig, dtype: torch.dtype) -> float:
    """Size of the weights at ``dtype``, in MiB."""
    return count_parameters(config) * dtype.itemsize / 2**20


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
