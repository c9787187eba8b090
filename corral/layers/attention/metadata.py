"""AttentionMetadata: where each token of a step reads and writes K/V in the paged cache.

A step's tokens are laid out decodes first (one token per sequence), then prefill chunks
(a run of consecutive tokens per sequence). Built once per step by the engine's input builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillChunk:
    """One sequence's chunk of new tokens: queries ``[query_start, query_start + query_len)``."""

    query_start: int
    query_len: int
    context_len: int  # tokens in the cache after this step (cached prefix + this chunk)
    kv_slots: torch.Tensor  # [context_len] cache slots of positions 0 .. context_len - 1


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] cache slot written by each token's K/V
    num_decode_tokens: int
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks_per_decode]
    decode_context_lens: torch.Tensor  # [num_decodes] tokens to attend to, the new one included
    prefills: list[PrefillChunk]

    @property
    def num_decodes(self) -> int:
        return self.num_decode_tokens
