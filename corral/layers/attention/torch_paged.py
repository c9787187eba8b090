"""Paged attention on the CPU (and the reference for other backends).

Decodes are batched in one call of ``kernels.paged_attention`` (the C++ kernel reading K/V in place when
built, else a gather + SDPA reference); each prefill chunk is one SDPA call. In batch-invariant mode every
token, prefill or decode, goes through that one-token-per-row kernel: a token's attention is then computed
by the same loop whether it is decoded, prefilled whole, in chunks, or recomputed after preemption (SDPA's
blocked softmax rounds differently), so with row-independent linears (int8) a sequence's tokens do not
depend on batching. It costs prefill speed on long prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels import kv_int8
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
        # [1, num_kv_heads, context_len, head_size]
        keys, values = key_cache.index_select(0, kv_slots), value_cache.index_select(0, kv_slots)
        if kv_int8.is_int8(key_cache):
            keys, values = kv_int8.dequantize(keys, query.dtype), kv_int8.dequantize(values, query.dtype)
        keys, values = keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0)
        q = query.transpose(0, 1).unsqueeze(0)  # [1, num_heads, query_len, head_size]
        if self.prefill_dtype is not None and self.prefill_dtype != q.dtype:
            q, keys, values = q.to(self.prefill_dtype), keys.to(self.prefill_dtype), values.to(self.prefill_dtype)
        if query_len == context_len:
            out = F.scaled_dot_product_attention(
                q, keys, values, is_causal=True, scale=self.scale, enable_gqa=True
            )
        else:
            # The chunk's queries sit at the end of the context: query i sees keys <= offset + i.
            offset = context_len - query_len
            q_pos = torch.arange(query_len, device=query.device)[:, None] + offset
            mask = torch.arange(context_len, device=query.device)[None, :] <= q_pos
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True
            )
        return out[0].transpose(0, 1).reshape(query_len, self.num_heads * self.head_size).to(query.dtype)
