"""AttentionMetadata: where each token of a step reads and writes K/V in the paged cache.

A step's tokens are laid out decodes first (one token per sequence), then prefill chunks
(a run of consecutive tokens per sequence). Built once per step by the engine's input builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    _decode_key_mask: torch.Tensor | None = field(default=None, init=False, repr=False)

    def decode_key_mask(self, block_size: int) -> torch.Tensor:
        """``[num_decodes, max_blocks * block_size]``, True where a decode's gathered key exists.
        Built on first use and shared by every layer of the step."""
        if self._decode_key_mask is None:
            max_len = self.decode_block_tables.shape[1] * block_size
            positions = torch.arange(max_len, device=self.decode_context_lens.device)
            self._decode_key_mask = positions[None, :] < self.decode_context_lens[:, None]
        return self._decode_key_mask

    @property
    def num_decodes(self) -> int:
        return self.num_decode_tokens
