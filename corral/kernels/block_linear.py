"""``x @ W.T (+ b)`` for a group-quantized ``W`` (int4 with mins, or int8), activations quantized in blocks
of 32 per row, to int8 or to 16 bits (``254 * q + r`` with q and r int8: two planes of the same integer dot
products, which removes nearly all the activation rounding error for twice the integer work): the C++
kernel when built, else the torch reference below, which defines the result (the kernel sums in another
order: equal within float rounding).

Row-major layout (``corral/quantization/blockwise.py`` builds it, the reference reads it): ``values`` is
``[N, K / 2]`` uint8 for int4 (in each group of 32, element j in the low nibble of byte j and element j + 16
in its high nibble, as in llama.cpp) or ``[N, K]`` int8; ``scales`` and ``mins`` are ``[N, K / group_size]``
float16. The kernel reads the same bytes with rows interleaved 8 at a time (``interleave_rows``), so that
one vector instruction works on 8 rows at once (see ``csrc/block_linear.cpp``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from corral.kernels import cpu_extension

ACTIVATION_BLOCK = 32
RESIDUAL_RADIX = 254  # a 16-bit activation is RESIDUAL_RADIX * q + r
INTERLEAVED_ROWS = 8
_CHUNK_BYTES = 4  # bytes of one row next to the same bytes of the 7 other rows of its group


class InterleavedBlocks(NamedTuple):
    """Block-quantized weights in the kernel's layout: rows in groups of 8 (the last padded with zeros),
    each block's bytes cut in 4-byte chunks stored side by side for the 8 rows."""

    values: torch.Tensor  # [groups, K * 8 / 2] uint8 (int4) or [groups, K * 8] int8
    scales: torch.Tensor  # [groups, K / group_size, 8] float16
    mins: torch.Tensor | None  # int4: like scales
    bits: int
    group_size: int
    out_features: int  # N: the rows before padding


def _chunks_per_block(bits: int) -> int:
    return ACTIVATION_BLOCK // (2 if bits == 4 else 1) // _CHUNK_BYTES


def interleave_rows(
    values: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, bits: int, group_size: int
) -> InterleavedBlocks:
    """Row-major blocks -> the kernel's layout (a copy; the caller drops the row-major tensors)."""
    rows = values.shape[0]
    padding = -rows % INTERLEAVED_ROWS

    def grouped(t: torch.Tensor) -> torch.Tensor:
        if padding:
            t = torch.cat((t, t.new_zeros(padding, *t.shape[1:])))
        return t.view(-1, INTERLEAVED_ROWS, *t.shape[1:])

    chunks = _chunks_per_block(bits)
    packed = grouped(values).view(-1, INTERLEAVED_ROWS, values.shape[1] // (chunks * _CHUNK_BYTES), chunks, _CHUNK_BYTES)
    packed = packed.permute(0, 2, 3, 1, 4).reshape(packed.shape[0], -1)
    scales = grouped(scales).transpose(1, 2).contiguous()
    mins = None if mins is None else grouped(mins).transpose(1, 2).contiguous()
    return InterleavedBlocks(packed, scales, mins, bits, group_size, rows)


def deinterleave_rows(
    weights: InterleavedBlocks, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The row-major ``values, scales, mins`` of every row, or of the rows at index ``rows`` in that order."""
    groups = weights.values.shape[0]
    chunks = _chunks_per_block(weights.bits)
    packed = weights.values.view(groups, -1, chunks, INTERLEAVED_ROWS, _CHUNK_BYTES)  # [g, block, chunk, row, byte]
    if rows is None:
        n = weights.out_features
        values = packed.permute(0, 3, 1, 2, 4).reshape(groups * INTERLEAVED_ROWS, -1)[:n]

        def row_major(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(groups * INTERLEAVED_ROWS, -1)[:n]
    else:
        group, lane = rows // INTERLEAVED_ROWS, rows % INTERLEAVED_ROWS
        values = packed[group, :, :, lane].reshape(rows.shape[0], -1)

        def row_major(t: torch.Tensor) -> torch.Tensor:
            return t[group, :, lane]

    mins = None if weights.mins is None else row_major(weights.mins)
    return values, row_major(weights.scales), mins


def unpack_int4(values: torch.Tensor) -> torch.Tensor:
    """``[N, K / 2]`` packed nibbles -> ``[N, K]`` uint8 codes 0..15."""
    blocks = values.view(values.shape[0], -1, ACTIVATION_BLOCK // 2)
    return torch.cat((blocks & 0x0F, blocks >> 4), dim=2).view(values.shape[0], -1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` codes 0..15 -> ``[N, K / 2]`` packed nibbles (the inverse of ``unpack_int4``)."""
    blocks = codes.to(torch.uint8).view(codes.shape[0], -1, ACTIVATION_BLOCK)
    low, high = blocks[:, :, : ACTIVATION_BLOCK // 2], blocks[:, :, ACTIVATION_BLOCK // 2 :]
    return (low | (high << 4)).reshape(codes.shape[0], -1)


def fake_quantize_activations(x: torch.Tensor, activation_bits: int = 8) -> torch.Tensor:
    """``x`` rounded as the kernel quantizes it, per block of 32 values of a row: symmetric int8 (q), or
    16 bits, q plus its residual r = round((x / step - q) * 254) on a step 254 times finer."""
    blocks = x.view(x.shape[0], -1, ACTIVATION_BLOCK)
    step = blocks.abs().amax(dim=2, keepdim=True) / 127
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    scaled = blocks * inverse
    q = scaled.round()
    if activation_bits == 16:
        r = ((scaled - q) * RESIDUAL_RADIX).round()
        return ((q * RESIDUAL_RADIX + r) * (step / RESIDUAL_RADIX)).view_as(x)
    return (q * step).view_as(x)


def block_linear_reference(
    x: torch.Tensor,  # [M, K] float32
    values: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    bias: torch.Tensor | None,
    bits: int,
    group_size: int,
    activation_bits: int = 8,
) -> torch.Tensor:  # [M, N]
    codes = unpack_int4(values) if bits == 4 else values
    scaled = codes.float() * scales.float().repeat_interleave(group_size, dim=1)
    y = fake_quantize_activations(x, activation_bits) @ scaled.T
    if mins is not None:  # the min term multiplies the exact activations
        y += x @ mins.float().repeat_interleave(group_size, dim=1).T
    return y if bias is None else y + bias


def block_linear(
    x: torch.Tensor, weights: InterleavedBlocks, bias: torch.Tensor | None, activation_bits: int = 8
) -> torch.Tensor:
    kernels = cpu_extension.load()
    if kernels is not None and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2:
        w = weights
        return kernels.block_linear(
            x, w.values, w.scales, w.mins, bias, w.bits, w.group_size, w.out_features, activation_bits
        )
    values, scales, mins = deinterleave_rows(weights)
    return block_linear_reference(x, values, scales, mins, bias, weights.bits, weights.group_size, activation_bits)
