"""INT8 weights x INT8 activations through fbgemm (x86): symmetric per-output-channel weights, per-row activations.

fbgemm's dynamic linear quantizes its whole input with one scale, so one row with large activations would
coarsen every other row of the batch and a request's output would depend on its neighbours. Each row is
therefore divided by its own absolute maximum first, and a pinning row ``[1, -1, 0, ...]`` is appended: the
input's range is then exactly [-1, 1] whatever the batch holds, fbgemm's single scale acts as a per-row
scale, and every row's result is bit-identical alone or in any batch.
"""

from __future__ import annotations

import warnings

import torch

from corral.errors import QuantizationError
from corral.kernels.row_scaling import rescale_rows, unit_rows_with_pin
from corral.platform import cpu_flags

_ROWS_PER_BLOCK = 4096  # rows packed per pass: bounds the float temporaries of packing


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8DynamicLinear:
    """One packed linear weight; see the module docstring for how activations are quantized."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        reduce_range: bool,
        input_scales: torch.Tensor | None = None,
    ):
        self.out_features, self.in_features = weight.shape
        values, scales = _int8_rows(weight, input_scales)
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(values, scales, zero_points, 0)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if bias is None else bias.detach().float().clone()
        # Without VNNI, fbgemm's u8 x s8 pairs sum in int16 and can saturate; 7-bit activations cannot.
        self.reduce_range = reduce_range

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # [num_rows, in_features] -> [num_rows, out_features]
        normalized, row_absmax = unit_rows_with_pin(x)
        y = torch.ops.quantized.linear_dynamic(normalized, self._packed, self.reduce_range)
        return rescale_rows(y, row_absmax, self.bias)

    def dequantized_weight(self) -> torch.Tensor:
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()

    def nbytes(self) -> int:
        bias_bytes = 0 if self.bias is None else self.bias.nbytes
        return self.out_features * self.in_features + 8 * self.out_features + bias_bytes


class Int8Rows:
    """A lookup table (the token embedding) as int8 rows with one float scale each, symmetric: a quarter of
    the float table's memory, and a lookup error of at most half a step (max |row| / 254) per element."""

    def __init__(self, table: torch.Tensor):
        self.values, scales = _int8_rows(table)
        self.scales = scales.float().unsqueeze(1)  # [num_rows, 1]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:  # [num_ids] -> [num_ids, width] float32
        return self.values.index_select(0, ids).float().mul_(self.scales.index_select(0, ids))

    def nbytes(self) -> int:
        return self.values.nbytes + self.scales.nbytes


def _int8_rows(matrix: torch.Tensor, column_scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of ``matrix`` (times ``column_scales`` per column, if given): the largest |x| of
    each row maps to 127. Returns the int8 values and the float64 scale of each row. Works a block of rows
    at a time, so a large matrix (or its product with the scales) never gets a float copy."""
    num_rows, width = matrix.shape
    values = torch.empty(num_rows, width, dtype=torch.int8)
    scales = torch.empty(num_rows, dtype=torch.float64)
    zero_points = torch.zeros(min(num_rows, _ROWS_PER_BLOCK), dtype=torch.long)
    for start in range(0, num_rows, _ROWS_PER_BLOCK):
        rows = matrix[start : start + _ROWS_PER_BLOCK].detach().float()
        if column_scales is not None:
            rows = rows * column_scales
        row_scales = (rows.abs().amax(dim=1) / 127).clamp_min(1e-30).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks quantized tensors deprecated; fbgemm still needs them
            block = torch.quantize_per_channel(rows, row_scales, zero_points[: len(rows)], 0, torch.qint8)
        values[start : start + len(rows)] = block.int_repr()
        scales[start : start + len(rows)] = row_scales
    return values, scales


class Int8Method:
    """``quantization="int8"``: weight-and-activation INT8 on fbgemm, the fast path for CPU batches."""

    name = "int8"
    quantizes_activations = True

    def __init__(self) -> None:
        if not fbgemm_available():
            raise QuantizationError("int8 needs torch's fbgemm engine, which this build or CPU lacks")
        self.reduce_range = "avx512_vnni" not in cpu_flags()

    def quantize(
        self, weight: torch.Tensor, bias: torch.Tensor | None, input_scales: torch.Tensor | None = None
    ) -> Int8DynamicLinear:
        if weight.dim() != 2:
            raise QuantizationError(f"int8 packs 2-D weights, got shape {tuple(weight.shape)}")
        if weight.device.type != "cpu":
            raise QuantizationError("int8 (fbgemm) runs on the CPU only")
        return Int8DynamicLinear(weight, bias, self.reduce_range, input_scales)

    def quantize_table(self, table: torch.Tensor) -> Int8Rows:
        if table.dim() != 2 or table.device.type != "cpu":
            raise QuantizationError(f"int8 packs 2-D CPU tables, got shape {tuple(table.shape)} on {table.device}")
        return Int8Rows(table)
