"""Paged attention on the CPU (and the reference for other backends).

Decodes are batched in one call of ``kernels.paged_attention`` (the C++ kernel reading K/V in place when
built, else a gather + SDPA reference); each prefill chunk is one call over its gathered context: the C++
flash-attention kernel where it runs (AVX-512, head size 64 or 128, float32; 2-2.3x torch's SDPA at 512
tokens on Zen 4, docs/performance.md), else SDPA. In batch-invariant mode every
token, prefill or decode, goes through that one-token-per-row kernel: a token's attention is then computed
by the same loop whether it is decoded, prefilled whole, in chunks, or recomputed after preemption (SDPA's
blocked softmax rounds differently), so with row-independent linears (int8) a sequence's tokens do not
depend on batching. It costs prefill speed on long prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels import cpu_extension, kv_int8
from corral.kernels.paged_attention import paged_attention
from corral.layers.attention.metadata import AttentionMetadata


class TorchPagedAttention:
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_size: int,
        block_size: int,
        batch_invariant: bool = False,
        prefill_dtype: torch.dtype | None = None,  # cast q, k, v to it for prefill SDPA (None: as they are)
    ):
        self.batch_invariant = batch_invariant
        self.prefill_dtype = prefill_dtype
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.block_size = block_size
        self.scale = head_size**-0.5
        self._mask: tuple[tuple, torch.Tensor] | None = None  # see _chunk_mask

    def _prefill_kernel(self, device: torch.device):
        """The C++ extension when its prefill kernel applies to this layer's prefills, else None."""
        if device.type != "cpu" or self.prefill_dtype not in (None, torch.float32):
            return None
        kernels = cpu_extension.load()
        if kernels is None or not kernels.prefill_attention_supported(self.head_size):
            return None
        return kernels

    def _chunk_mask(self, query_len: int, context_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The additive mask of a chunk whose queries sit at the end of its context (query i sees keys up to
        ``context_len - query_len + i``), kept for the step's other layers, which ask for the same one."""
        key = (query_len, context_len, dtype, device)
        if self._mask is None or self._mask[0] != key:
            q_pos = torch.arange(query_len, device=device)[:, None] + (context_len - query_len)
            hidden = torch.arange(context_len, device=device)[None, :] > q_pos
            mask = torch.zeros(query_len, context_len, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))
            self._mask = key, mask
        return self._mask[1]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        key_cache, value_cache = kv_cache[0], kv_cache[1]  # [num_slots, num_kv_heads, head_size (+ 4 if int8)]
        kv_int8.write_kv(key_cache, metadata.slot_mapping, key)
        kv_int8.write_kv(value_cache, metadata.slot_mapping, value)

        num_tokens = query.shape[0]
        if self.batch_invariant:
            return self._per_token(query, key_cache, value_cache, metadata, num_tokens)
        out = query.new_empty(num_tokens, self.num_heads * self.head_size)
        num_decodes = metadata.num_decode_tokens
        if num_decodes:
            out[:num_decodes] = self._per_token(query, key_cache, value_cache, metadata, num_decodes)
        for chunk in metadata.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
            out[rows] = self._prefill(query[rows], key_cache, value_cache, chunk.kv_slots)
        return out

    def _per_token(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
        num_rows: int,  # the first num_rows tokens
    ) -> torch.Tensor:
        out = paged_attention(
            query[:num_rows], key_cache, value_cache, metadata.block_tables, metadata.seq_of_token[:num_rows],
            metadata.context_lens[:num_rows], self.block_size, self.scale,
        )
        return out.view(num_rows, self.num_heads * self.head_size)

    def _prefill(
        self,
        query: torch.Tensor,  # [query_len, num_heads, head_size]
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        kv_slots: torch.Tensor,  # [context_len]
    ) -> torch.Tensor:
        query_len, context_len = query.shape[0], kv_slots.shape[0]
        kernels = self._prefill_kernel(query.device) if query.dtype == torch.float32 else None
        if kernels is not None:
            keys = kv_int8.gather(key_cache, kv_slots, torch.float32)  # [num_kv_heads, context_len, head_size]
            values = kv_int8.gather(value_cache, kv_slots, torch.float32)
            out = kernels.prefill_attention(query, keys, values, self.scale)
            return out.view(query_len, self.num_heads * self.head_size)
        dtype = self.prefill_dtype or query.dtype
        # [1, num_kv_heads, context_len, head_size]
        keys = kv_int8.gather(key_cache, kv_slots, dtype).unsqueeze(0)
        values = kv_int8.gather(value_cache, kv_slots, dtype).unsqueeze(0)
        q = query.transpose(0, 1).unsqueeze(0).to(dtype)  # [1, num_heads, query_len, head_size]
        if query_len == context_len:
            out = F.scaled_dot_product_attention(
                q, keys, values, is_causal=True, scale=self.scale, enable_gqa=True
            )
        else:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=self._chunk_mask(query_len, context_len, dtype, q.device), scale=self.scale,
                enable_gqa=True,
            )
        return out[0].transpose(0, 1).reshape(query_len, self.num_heads * self.head_size).to(query.dtype)
