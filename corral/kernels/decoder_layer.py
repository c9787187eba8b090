"""A whole decoder layer in one C++ call, for steps whose tokens are all decodes and whose linears are
block-quantized (``kernels.block_linear``). It runs the kernels the module path runs, in the same order, so
the result is bit-identical to ``LlamaDecoderLayer`` with the CPU paged backend; it removes the Python
between them (module calls, wrappers, views), which at one token per step costs more than the arithmetic
of a small model. The module path is the reference; without the C++ build it is the only path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from corral.kernels import cpu_extension
from corral.kernels.block_linear import InterleavedBlocks


class BlockLinearParts(NamedTuple):
    """One block-quantized linear layer: its weights in the kernel's layout, its bias, and how finely its
    input is rounded (8 or 16 bits)."""

    weights: InterleavedBlocks
    bias: torch.Tensor | None
    activation_bits: int
    dense: torch.Tensor | None = None  # BlockLinear.keep_dense_copy_: for inputs of >= dense_min_rows rows
    dense_min_rows: int = 0


def pack_decoder_layer(
    qkv_proj: BlockLinearParts,
    o_proj: BlockLinearParts,
    gate_up_proj: BlockLinearParts,
    down_proj: BlockLinearParts,
    input_norm: torch.Tensor,
    post_attention_norm: torch.Tensor,
    eps: float,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
) -> Any | None:
    """The layer's weights as the C++ side holds them (sharing storage), or None without the C++ build."""
    kernels = cpu_extension.load()
    if kernels is None or input_norm.dtype != torch.float32:
        return None
    linears = [
        kernels.BlockLinearWeights(
            p.weights.values, p.weights.scales, p.weights.mins, p.bias, p.weights.bits, p.weights.group_size,
            p.weights.out_features, p.activation_bits, p.dense, p.dense_min_rows,
        )
        for p in (qkv_proj, o_proj, gate_up_proj, down_proj)
    ]
    return kernels.DecoderLayerWeights(
        *linears, input_norm, post_attention_norm, eps, num_heads, num_kv_heads, head_size, head_size**-0.5,
        block_size,
    )


def decoder_layer(
    layer: Any,  # from pack_decoder_layer
    hidden: torch.Tensor,  # [num_tokens, hidden_size]
    cos: torch.Tensor,  # [num_tokens, 1, head_size]
    sin: torch.Tensor,
    kv_cache: torch.Tensor,  # [2, num_slots, num_kv_heads, head_size (+ 4 if int8)]
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    seq_of_token: torch.Tensor,
    context_lens: torch.Tensor,
) -> torch.Tensor:  # [num_tokens, hidden_size]
    return cpu_extension.load().decoder_layer(
        layer, hidden, cos, sin, kv_cache, slot_mapping, block_tables, seq_of_token, context_lens
    )
