"""``x @ W.T (+ b)`` for a group-quantized ``W`` (int4 with mins, or int8), activations quantized to int8 in
blocks of 32 per row: the C++ kernel when built, else the torch reference below, which defines the result
(the kernel sums in another order: equal within float rounding).

Weight layout (``corral/quantization/blockwise.py`` builds it): ``values`` is ``[N, K / 2]`` uint8 for int4
(in each group of 32, element j in the low nibble of byte j and element j + 16 in its high nibble, as in
llama.cpp) or ``[N, K]`` int8; ``scales`` and ``mins`` are ``[N, K / group_size]`` float16.
"""

from __future__ import annotations

import torch

from corral.kernels import cpu_extension

ACTIVATION_BLOCK = 32


def unpack_int4(values: torch.Tensor) -> torch.Tensor:
    """``[N, K / 2]`` packed nibbles -> ``[N, K]`` uint8 codes 0..15."""
    blocks = values.view(values.shape[0], -1, ACTIVATION_BLOCK // 2)
    return torch.cat((blocks & 0x0F, blocks >> 4), dim=2).view(values.shape[0], -1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` codes 0..15 -> ``[N, K / 2]`` packed nibbles (the inverse of ``unpack_int4``)."""
    blocks = codes.to(torch.uint8).view(codes.shape[0], -1, ACTIVATION_BLOCK)
    low, high = blocks[:, :, : ACTIVATION_BLOCK // 2], blocks[:, :, ACTIVATION_BLOCK // 2 :]
    return (low | (high << 4)).reshape(codes.shape[0], -1)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as the kernel quantizes it: symmetric int8 per block of 32 values of a row."""
    blocks = x.view(x.shape[0], -1, ACTIVATION_BLOCK)
    scale = blocks.abs().amax(dim=2, keepdim=True) / 127
    inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    return ((blocks * inverse).round() * scale).view_as(x)


def block_linear_reference(
    x: torch.Tensor,  # [M, K] float32
    values: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    bias: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> torch.Tensor:  # [M, N]
    codes = unpack_int4(values) if bits == 4 else values
    scaled = codes.float() * scales.float().repeat_interleave(group_size, dim=1)
    y = fake_quantize_activations(x) @ scaled.T
    if mins is not None:  # the min term multiplies the exact activations
        y += x @ mins.float().repeat_interleave(group_size, dim=1).T
    return y if bias is None else y + bias


def block_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    bias: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    kernels = cpu_extension.load()
    if kernels is not None and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2:
        return kernels.block_linear(x, values, scales, mins, bias, bits, group_size)
    return block_linear_reference(x, values, scales, mins, bias, bits, group_size)
