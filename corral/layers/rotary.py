"""Rotary position embeddings (rotate-half convention, as HF Llama), with llama3 frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

from corral.kernels.rotary import apply_rotary
from corral.models.spec import RopeScaling


def rope_inv_freq(head_size: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies ``[head_size // 2]`` in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size))
    if scaling is None:
        return inv_freq
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate smoothly in between.
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to q and k given each token's absolute position, from a precomputed cos/sin table."""

    def __init__(self, head_size: int, max_position: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        self.head_size = head_size
        inv_freq = rope_inv_freq(head_size, theta, scaling)
        freqs = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_position, head_size]
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``[num_tokens, 1, head_size]`` cos and sin for the step's positions, computed once per step."""
        cos = self.cos_cache[positions].unsqueeze(1).to(dtype)
        return cos, self.sin_cache[positions].unsqueeze(1).to(dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [num_tokens, num_heads, head_size]; q and k may come in together as one tensor
        return apply_rotary(x, cos, sin)
