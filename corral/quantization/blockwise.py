"""Group-quantized weights that stay packed: int4 (asymmetric, with a min per group) and int8 (symmetric).

Each row of a ``[rows, cols]`` weight is cut along ``cols`` into groups of ``group_size`` (a multiple of 32
that divides ``cols``; ``cols`` itself is one scale per output channel) with a float16 scale (and min):  int4: ``w = scale * q + min``, q in 0..15 (llama.cpp's Q4_1; its Q4_0 is the case
``min = -8 * scale``);  int8: ``w = scale * q``, q in -127..127 (llama.cpp's Q8_0). GGUF files in those
formats load into these blocks without a float copy, and float weights are rounded to nearest into them.
The products run in ``kernels.block_linear`` (activations rounded to int8, or to 16 bits as two int8
planes, in blocks of 32; integer dot products), so int4 weights take 5 bits per weight at group 32 (4.25 at
128) in memory, not 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from corral.config import ACTIVATION_BITS
from corral.errors import QuantizationError
from corral.kernels.block_linear import (
    ACTIVATION_BLOCK,
    InterleavedBlocks,
    block_linear,
    deinterleave_rows,
    interleave_rows,
    pack_int4,
    unpack_int4,
)

GROUP_SIZES = (32, 64, 128, 256)  # the group sizes offered for rounding float weights
_FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class BlockQuantized:
    """A ``[rows, cols]`` matrix in groups of ``group_size`` along ``cols`` (see the module docstring)."""

    bits: int  # 4 or 8
    group_size: int
    values: torch.Tensor  # int4: [rows, cols / 2] uint8 packed nibbles; int8: [rows, cols] int8
    scales: torch.Tensor  # [rows, cols / group_size] float16
    mins: torch.Tensor | None  # int4: like scales; int8: None

    def __post_init__(self) -> None:
        rows, cols = self.shape
        valid_group = self.group_size > 0 and self.group_size % ACTIVATION_BLOCK == 0 and cols % self.group_size == 0
        if self.bits not in (4, 8) or not valid_group:
            raise QuantizationError(f"invalid {self.bits}-bit blocks of group size {self.group_size}, shape {self.shape}")
        if self.scales.shape != (rows, cols // self.group_size) or self.scales.dtype != torch.float16:
            raise QuantizationError(f"scales must be float16 [{rows}, {cols // self.group_size}]")
        if (self.mins is None) != (self.bits == 8) or (self.mins is not None and self.mins.shape != self.scales.shape):
            raise QuantizationError("int4 blocks need mins shaped like the scales; int8 blocks have none")

    @property
    def shape(self) -> tuple[int, int]:
        rows, width = self.values.shape
        return rows, width * 2 if self.bits == 4 else width

    def dequantize(self) -> torch.Tensor:  # [rows, cols] float32
        codes = unpack_int4(self.values) if self.bits == 4 else self.values
        values = codes.float() * self.scales.float().repeat_interleave(self.group_size, dim=1)
        if self.mins is not None:
            values += self.mins.float().repeat_interleave(self.group_size, dim=1)
        return values

    def take_rows(self, index: torch.Tensor) -> BlockQuantized:
        """The rows at ``index``, in that order (a permutation reorders a matrix's rows)."""
        mins = None if self.mins is None else self.mins.index_select(0, index)
        return BlockQuantized(
            self.bits, self.group_size, self.values.index_select(0, index), self.scales.index_select(0, index), mins
        )

    @staticmethod
    def cat_rows(parts: list[BlockQuantized]) -> BlockQuantized:
        """The matrices stacked along rows (fusing q/k/v or gate/up); all must share bits and group size."""
        first = parts[0]
        if any((p.bits, p.group_size, p.shape[1]) != (first.bits, first.group_size, first.shape[1]) for p in parts):
            raise QuantizationError("cannot fuse blocks of different formats or widths")
        mins = None if first.mins is None else torch.cat([p.mins for p in parts])
        return BlockQuantized(
            first.bits, first.group_size, torch.cat([p.values for p in parts]), torch.cat([p.scales for p in parts]), mins
        )

    def nbytes(self) -> int:
        return self.values.nbytes + self.scales.nbytes + (0 if self.mins is None else self.mins.nbytes)

    def interleaved(self) -> InterleavedBlocks:
        """The same blocks in the kernel's layout (rows interleaved 8 at a time)."""
        return interleave_rows(self.values, self.scales, self.mins, self.bits, self.group_size)

    @staticmethod
    def from_interleaved(weights: InterleavedBlocks, rows: torch.Tensor | None = None) -> BlockQuantized:
        """Every row of kernel-layout blocks, or the rows at index ``rows``, back in row-major blocks."""
        return BlockQuantized(weights.bits, weights.group_size, *deinterleave_rows(weights, rows))


def quantize_int4(weight: torch.Tensor, group_size: int) -> BlockQuantized:
    """Round-to-nearest asymmetric int4: each group's min maps to 0 and its max to 15 (up to the float16
    rounding of scale and min, after which codes are clamped to 0..15)."""
    groups = _groups(weight, group_size)  # [rows, num_groups, group_size]
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scales = _to_float16((high - low) / 15)
    mins = _to_float16(low)
    step = scales.float().unsqueeze(2)
    codes = ((groups - mins.float().unsqueeze(2)) / torch.where(step > 0, step, 1.0)).round_().clamp_(0, 15)
    return BlockQuantized(4, group_size, pack_int4(codes.view(weight.shape)), scales, mins)


def quantize_int8(weight: torch.Tensor, group_size: int | None = 32) -> BlockQuantized:
    """Round-to-nearest symmetric int8: each group's largest |w| maps to 127. ``group_size=None``: one group
    per row (a scale per output channel)."""
    group_size = weight.shape[-1] if group_size is None else group_size
    groups = _groups(weight, group_size, per_row=group_size == weight.shape[-1])
    scales = _to_float16(groups.abs().amax(dim=2) / 127)
    step = scales.float().unsqueeze(2)
    codes = (groups / torch.where(step > 0, step, 1.0)).round_().clamp_(-127, 127)
    return BlockQuantized(8, group_size, codes.to(torch.int8).view(weight.shape), scales, None)


def _groups(weight: torch.Tensor, group_size: int, per_row: bool = False) -> torch.Tensor:
    if weight.dim() != 2:
        raise QuantizationError(f"block quantization packs 2-D weights, got shape {tuple(weight.shape)}")
    if not per_row and group_size not in GROUP_SIZES:
        raise QuantizationError(f"group size must be one of {GROUP_SIZES}, got {group_size}")
    rows, cols = weight.shape
    if cols % group_size:
        raise QuantizationError(f"input width {cols} is not a multiple of the group size {group_size}")
    if cols % ACTIVATION_BLOCK:
        raise QuantizationError(f"input width {cols} is not a multiple of {ACTIVATION_BLOCK}")
    return weight.detach().float().reshape(rows, cols // group_size, group_size)


def check_activation_bits(activation_bits: int) -> None:
    if activation_bits not in ACTIVATION_BITS:
        raise QuantizationError(f"activation bits must be one of {ACTIVATION_BITS}, got {activation_bits}")


def _to_float16(values: torch.Tensor) -> torch.Tensor:
    if values.abs().max() > _FLOAT16_MAX:
        raise QuantizationError("a group's scale or min exceeds the float16 range")
    return values.half()


def dense_weight(weight: torch.Tensor, batch_rows: int) -> torch.Tensor:
    """``weight`` reordered once into oneDNN's blocked layout for ``dense_linear`` (torch's own prepacking, as
    its compiler does for frozen weights: a plain weight is reordered again on every product, which costs
    as much as the product itself below a few dozen rows); as it is where torch has no oneDNN."""
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and (
            weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        # oneDNN's bf16 path needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT: an AVX2-only host keeps torch's own bf16.
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch_rows)
    return weight.contiguous()


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a ``dense_weight``; the C++ decoder layer (kernels/csrc/decoder_layer.cpp) calls the
    same ops, so both round alike."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return F.linear(x, weight)


class BlockLinear:
    """A packed linear layer over ``BlockQuantized`` weights, held only in the kernel's layout; each row's
    result is independent of its batch. ``activation_bits`` (8 or 16) is how finely the kernel rounds the
    input: 16 costs twice the integer work and removes nearly all of the rounding error of 8."""

    def __init__(self, weight: BlockQuantized, bias: torch.Tensor | None, activation_bits: int = 8):
        if weight.shape[1] % ACTIVATION_BLOCK:
            raise QuantizationError(f"input width {weight.shape[1]} is not a multiple of {ACTIVATION_BLOCK}")
        check_activation_bits(activation_bits)
        self.weight = weight.interleaved()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.activation_bits = activation_bits
        self.dense: torch.Tensor | None = None  # see keep_dense_copy_
        self.dense_min_rows = 0

    def keep_dense_copy_(self, min_rows: int, dtype: torch.dtype = torch.bfloat16) -> None:
        """Also hold the dequantized weight in ``dtype``, for inputs of at least ``min_rows`` rows: on CPUs with
        matrix units (AMX) a bf16 product through oneDNN outruns the block kernel on batches, at 2 bytes a
        parameter. Which path a row takes then depends on its batch's size."""
        self.dense = dense_weight(self.dequantized_weight().to(dtype), min_rows)
        self.dense_min_rows = min_rows

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # [num_rows, in_features] -> [num_rows, out_features]
        if self.dense is not None and x.shape[0] >= self.dense_min_rows:
            y = dense_linear(x.to(self.dense.dtype), self.dense).float()
            return y if self.bias is None else y.add_(self.bias)
        return block_linear(x, self.weight, self.bias, self.activation_bits)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:  # [num_ids] -> [num_ids, in_features]
        """Rows of the weight itself: a tied embedding table and LM head share one packed copy."""
        return BlockQuantized.from_interleaved(self.weight, ids).dequantize()

    def blocks(self) -> BlockQuantized:
        """The weight as row-major blocks (a copy)."""
        return BlockQuantized.from_interleaved(self.weight)

    def dequantized_weight(self) -> torch.Tensor:
        return self.blocks().dequantize()

    def nbytes(self) -> int:
        w = self.weight
        held = w.values.nbytes + w.scales.nbytes + (0 if w.mins is None else w.mins.nbytes)
        held += 0 if self.dense is None else self.dense.numel() * self.dense.element_size()
        return held + (0 if self.bias is None else self.bias.nbytes)


class BlockMethod:
    """Weights packed into blocks at load time: ``int4`` (round-to-nearest, group ``group_size``), or
    ``keeps_stored_blocks`` (``gguf``, or a ``corral quantize`` directory): the checkpoint's own packed
    matrices are kept as they are (the loader hands them over packed) and any float matrix is packed as int8.
    Embedding tables (and so a tied LM head) are int8, group 32, as llama.cpp's 4-bit files keep them at 8
    bits. Every packed linear rounds its input to ``activation_bits`` (``set_activation_bits_`` applies it
    to blocks the loader handed over)."""

    quantizes_activations = False  # activations are quantized per block of 32, no smoothing needed

    def __init__(
        self,
        name: str,
        linear_bits: int,
        group_size: int = 32,
        keeps_stored_blocks: bool = False,
        activation_bits: int = 8,
    ):
        if group_size not in GROUP_SIZES:
            raise QuantizationError(f"group size must be one of {GROUP_SIZES}, got {group_size}")
        check_activation_bits(activation_bits)
        self.name = name
        self.linear_bits = linear_bits
        self.group_size = group_size
        self.keeps_stored_blocks = keeps_stored_blocks
        self.activation_bits = activation_bits

    def quantize(
        self, weight: torch.Tensor, bias: torch.Tensor | None, input_scales: torch.Tensor | None = None
    ) -> BlockLinear:
        if input_scales is not None:
            weight = weight * input_scales
        if self.linear_bits == 4:
            return BlockLinear(quantize_int4(weight, self.group_size), bias, self.activation_bits)
        return BlockLinear(quantize_int8(weight, self.group_size), bias, self.activation_bits)

    def quantize_table(self, table: torch.Tensor) -> BlockLinear:
        return BlockLinear(quantize_int8(table, ACTIVATION_BLOCK), None, self.activation_bits)


def keep_dense_copies_(
    model: nn.Module, min_rows: int, min_rows_wide: int, wide: int, dtype: torch.dtype = torch.bfloat16
) -> int:
    """``BlockLinear.keep_dense_copy_`` on every block-quantized linear of ``model`` (a tied LM head's table
    too), used from ``min_rows`` rows, or ``min_rows_wide`` for linears of at least ``wide`` outputs (the LM
    head), where the dense product pays sooner; returns the bytes the copies take."""
    added = 0
    for packed in {id(p): p for m in model.modules() if isinstance(p := getattr(m, "packed", None), BlockLinear)}.values():
        before = packed.nbytes()
        packed.keep_dense_copy_(min_rows_wide if packed.out_features >= wide else min_rows, dtype)
        added += packed.nbytes() - before
    return added


def set_activation_bits_(model: nn.Module, activation_bits: int) -> None:
    """Make every block-quantized linear (and packed table, for a tied LM head) of ``model`` round its
    input to ``activation_bits``."""
    check_activation_bits(activation_bits)
    for module in model.modules():
        packed = getattr(module, "packed", None)
        if isinstance(packed, BlockLinear):
            packed.activation_bits = activation_bits
