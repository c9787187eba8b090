"""The int8 KV cache: each (slot, KV head) row holds ``head_size`` int8 codes followed by the 4 bytes of
its float32 scale (symmetric: ``scale = max|x| / 127``, ``x ~ scale * code``). One int8 tensor per layer
still holds K and V, and block tables index it as they index the float cache. A row of 64 takes 68 bytes
instead of 256 (fp32) or 128 (fp16): 3.8x the tokens of the fp32 cache in the same memory.

``quantize_rows`` rounds exactly as the C++ writer does (``csrc/paged_attention.cpp``): the same float32
operations in the same order, so the module path and the fused decode layer store identical bytes.
"""

from __future__ import annotations

import torch

from corral.kernels import cpu_extension

SCALE_BYTES = 4  # one float32 per row


def row_width(head_size: int) -> int:
    """Bytes of one (slot, KV head) row."""
    return head_size + SCALE_BYTES


def row_layout(head_size: int, dtype: torch.dtype, kv_cache_dtype: str) -> tuple[int, torch.dtype]:
    """Elements and dtype of one (slot, KV head) row: ``kv_cache_dtype`` "model" keeps ``dtype``."""
    return (row_width(head_size), torch.int8) if kv_cache_dtype == "int8" else (head_size, dtype)


def is_int8(cache: torch.Tensor) -> bool:
    return cache.dtype == torch.int8


def codes_and_scales(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``[..., head_size + 4]`` int8 rows: codes ``[..., head_size]`` and scales ``[...]`` float32."""
    head_size = cache.shape[-1] - SCALE_BYTES
    return cache[..., :head_size], cache[..., head_size:].view(torch.float32).squeeze(-1)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., head_size]`` float -> int8 codes and float32 scales ``[...]``."""
    x = x.float()
    scale = x.abs().amax(dim=-1) / 127
    inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    codes = (x * inverse.unsqueeze(-1)).round_().to(torch.int8)
    return codes, scale


def write_reference(cache: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """Quantize ``rows`` ``[num_tokens, num_kv_heads, head_size]`` into the int8 ``cache`` at ``slots``."""
    codes, scales = quantize_rows(rows)
    cache_codes, cache_scales = codes_and_scales(cache)
    cache_codes.index_copy_(0, slots, codes)
    cache_scales.index_copy_(0, slots, scales)


def write_kv(cache: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """A step's K (or V) rows into their slots of one layer's K (or V) cache, float or int8."""
    if not is_int8(cache):
        cache.index_copy_(0, slots, rows)
        return
    kernels = cpu_extension.load()
    if kernels is not None and cache.device.type == "cpu" and rows.dtype == torch.float32:
        kernels.write_kv(cache, slots, rows)
    else:
        write_reference(cache, slots, rows)


def dequantize(rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[..., head_size + 4]`` int8 rows -> ``[..., head_size]`` floats."""
    codes, scales = codes_and_scales(rows)
    return (codes.float() * scales.unsqueeze(-1)).to(dtype)


def gather(cache: torch.Tensor, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The K (or V) rows at ``slots`` of one layer's cache, float or int8, as ``[num_kv_heads, len(slots),
    head_size]`` floats of ``dtype``: what prefill attention reads."""
    if not is_int8(cache):
        return cache.index_select(0, slots).transpose(0, 1).to(dtype)
    kernels = cpu_extension.load()
    if kernels is not None and cache.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        return kernels.gather_kv(cache, slots, dtype)
    return dequantize(cache.index_select(0, slots)).transpose(0, 1).to(dtype)
