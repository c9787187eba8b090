"""The Hugging Face Llama weight names and shapes every loader produces, and the check against them."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.models.spec import ModelConfig


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> torch shape ([out_features, in_features] for linears) of every weight of ``config``."""
    hidden, inter = config.hidden_size, config.intermediate_size
    q_size = config.num_attention_heads * config.head_size
    kv_size = config.num_key_value_heads * config.head_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
    }
    head_rows = config.vocab_size if config.draft_vocab_size is None else config.draft_vocab_size
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (head_rows, hidden)
    if config.draft_vocab_size is not None:
        shapes["lm_head.token_ids"] = (head_rows,)  # the target ids the reduced head scores, in its row order
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
                p + "self_attn.q_proj.weight": (q_size, hidden),
                p + "self_attn.k_proj.weight": (kv_size, hidden),
                p + "self_attn.v_proj.weight": (kv_size, hidden),
                p + "self_attn.o_proj.weight": (hidden, q_size),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
            }
        )
        if config.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q_size,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_size,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_size,)
    return shapes


def check_state_dict(config: ModelConfig, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise unless ``state_dict`` holds exactly the weights of ``config`` with the right shapes."""
    check_shapes(config, {name: tuple(tensor.shape) for name, tensor in state_dict.items()}, source)


def check_shapes(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise unless ``shapes`` (name -> shape, read from a header) are exactly the weights of ``config``."""
    expected = expected_shapes(config)
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise UnsupportedModelError(f"{source}: unexpected weights {_head(unexpected)}")
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise ModelLoadError(f"{source}: missing weights {_head(missing)}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ModelLoadError(f"{source}: weight {name} has shape {tuple(shapes[name])}, config implies {shape}")


def _head(names: list[str], limit: int = 5) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
