"""The attention backend protocol: one narrow seam between the model and the paged cache."""

from __future__ import annotations

from typing import Protocol

import torch

from corral.layers.attention.metadata import AttentionMetadata


class AttentionBackend(Protocol):
    """Writes a step's new K/V into the paged cache, then attends through it.

    Invariant: every query token attends exactly to the keys of its own sequence at positions
    ``<=`` its own, including keys written in this same step (so a request whose prefix was
    computed by another request earlier in the same step reads it correctly).
    """

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        kv_cache: torch.Tensor,  # [2, num_slots, num_kv_heads, head_size]; int8: head_size + 4 (kernels/kv_int8.py)
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, num_heads * head_size]
        ...
