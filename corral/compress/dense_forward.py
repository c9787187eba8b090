"""A plain, differentiable forward of a Llama-family model over HF-named weights, for offline training.

The serving model (``models/llama.py``) runs on a paged KV cache and compiled kernels without autograd.
Tuning quantization parameters needs gradients through whole sequences, so this module computes the same
function with torch operations only: batched ``[batch, tokens]`` inputs, causal attention over each
sequence, positions 0..tokens-1. Each linear is a callable, so a caller can substitute a tunable one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from corral.layers.rotary import rope_inv_freq
from corral.models.spec import ModelConfig

# x [..., in_features] -> [..., out_features]: layer index and HF name ("self_attn.q_proj") -> the product
LinearFn = Callable[[int, str, torch.Tensor], torch.Tensor]


def float_linears(weights: Mapping[str, torch.Tensor]) -> LinearFn:
    """Every linear as the product with its float weight (and bias, where the checkpoint has one)."""

    def linear(index: int, name: str, x: torch.Tensor) -> torch.Tensor:
        prefix = f"model.layers.{index}.{name}"
        return F.linear(x, weights[prefix + ".weight"], weights.get(prefix + ".bias"))

    return linear


class DenseForward:
    """Logits ``[batch, tokens, vocab]`` of ``config``'s model; ``weights`` holds the float non-linear
    tensors (embedding, norms, LM head, biases) under HF names, ``linear`` computes each decoder linear.
    ``hidden_states`` gives the rows the LM head reads (after the final norm)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, torch.Tensor], linear: LinearFn):
        self.config = config
        self.weights = weights
        self.linear = linear
        self.inv_freq = rope_inv_freq(config.head_size, config.rope_theta, config.rope_scaling)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_states(input_ids)
        head = self.weights.get("lm_head.weight", self.weights["model.embed_tokens.weight"])
        return hidden @ head.T

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final hidden states ``[batch, tokens, hidden_size]``, after the final norm."""
        config, weights = self.config, self.weights
        batch, tokens = input_ids.shape
        heads, kv_heads, head_size = config.num_attention_heads, config.num_key_value_heads, config.head_size
        cos, sin = self._rotary(tokens)
        hidden = weights["model.embed_tokens.weight"][input_ids]
        for index in range(config.num_hidden_layers):
            prefix = f"model.layers.{index}."
            x = self._rms_norm(hidden, weights[prefix + "input_layernorm.weight"])
            q = self.linear(index, "self_attn.q_proj", x).view(batch, tokens, heads, head_size).transpose(1, 2)
            k = self.linear(index, "self_attn.k_proj", x).view(batch, tokens, kv_heads, head_size).transpose(1, 2)
            v = self.linear(index, "self_attn.v_proj", x).view(batch, tokens, kv_heads, head_size).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != heads)
            attended = attended.transpose(1, 2).reshape(batch, tokens, heads * head_size)
            hidden = hidden + self.linear(index, "self_attn.o_proj", attended)
            x = self._rms_norm(hidden, weights[prefix + "post_attention_layernorm.weight"])
            gate = F.silu(self.linear(index, "mlp.gate_proj", x)) * self.linear(index, "mlp.up_proj", x)
            hidden = hidden + self.linear(index, "mlp.down_proj", gate)
        return self._rms_norm(hidden, weights["model.norm.weight"])

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps) * weight

    def _rotary(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.arange(tokens, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, rotate-half convention, on ``[batch, heads, tokens, head_size]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
