"""Rotary embedding (rotate-half): the C++ kernel when built, bit-identical to the torch reference."""

from __future__ import annotations

import torch

from corral.kernels import cpu_extension


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[tokens, heads, head_size]`` (the last dimension contiguous), ``cos``/``sin``
    ``[tokens, 1, head_size]``: ``x * cos + rotate_half(x) * sin``."""
    kernels = cpu_extension.load()
    if (
        kernels is not None
        and x.device.type == "cpu"
        and x.dim() == 3
        and x.dtype == cos.dtype == sin.dtype == torch.float32
        and x.stride(2) == 1
    ):
        return kernels.apply_rotary(x, cos, sin)
    return apply_rotary_reference(x, cos, sin)
