"""GPTQ (Frantar et al., 2022): int4 weights that minimise the layer's output error, not the weight error.

For a linear layer ``y = x @ W.T`` and calibration inputs ``X``, the output error of a quantized ``Q`` is
``||X W.T - X Q.T||^2``, a quadratic in each row with Hessian ``H = 2 X.T X`` (shared by all rows). GPTQ
rounds one input column at a time and spreads that column's rounding error over the columns not yet
rounded, weighted by the upper Cholesky factor of ``H^-1``, so correlated inputs absorb it (Optimal Brain
Quantization, updates batched per block). Columns go in order, each group's grid (scale and min, as
``blockwise.quantize_int4`` sets them) fixed at its first column from the weights updated so far; or, with
``act_order``, loudest input first (descending ``H_ii``), so the columns whose error costs most are rounded
while the most columns remain to absorb it, on grids set up front from the given weights ("static groups").
Either way the result is exactly the ``BlockQuantized`` int4 format of round-to-nearest and runs on the
same kernels.
"""

from __future__ import annotations

import math

import torch

from corral.errors import QuantizationError
from corral.kernels.block_linear import pack_int4
from corral.quantization.blockwise import GROUP_SIZES, BlockQuantized, quantize_int4


class HessianAccumulator:
    """``H = 2/n X.T X`` of a layer's inputs ``X`` (n tokens), summed in float64 over calibration batches."""

    def __init__(self, in_features: int):
        self.in_features = in_features
        self.num_tokens = 0
        self._gram: torch.Tensor | None = None  # X.T X, [in_features, in_features] float64

    def add(self, inputs: torch.Tensor) -> None:  # [num_tokens, in_features] (or [..., in_features])
        if inputs.shape[-1] != self.in_features:
            raise QuantizationError(f"inputs of width {inputs.shape[-1]}, Hessian width {self.in_features}")
        x = inputs.detach().reshape(-1, self.in_features).double()
        gram = x.T @ x
        self._gram = gram if self._gram is None else self._gram.add_(gram)
        self.num_tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:  # [in_features, in_features] float32
        if self._gram is None or self.num_tokens == 0:
            raise QuantizationError("no calibration inputs were added to the Hessian")
        return (self._gram * (2 / self.num_tokens)).float()


def gptq_int4(
    weight: torch.Tensor,  # [out_features, in_features]
    hessian: torch.Tensor,  # [in_features, in_features], e.g. HessianAccumulator.hessian()
    group_size: int,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> BlockQuantized:
    """Asymmetric int4 in groups of ``group_size`` along the inputs, rounded by GPTQ (columns in order, or
    loudest first with ``act_order``).

    ``damp * mean(diag(H))`` is added to the diagonal of ``H`` (retried once at 10x if ``H`` is still not
    positive definite). Inputs that never fire (``H_ii = 0``) get weight 0. ``block_size`` columns share a
    lazy update; it is rounded down to a multiple of ``group_size`` (at least one group), so that in order
    each group's grid is set from fully updated weights.
    """
    if weight.dim() != 2:
        raise QuantizationError(f"GPTQ quantizes 2-D weights, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise QuantizationError(f"Hessian of shape {tuple(hessian.shape)} for {cols} input columns")
    if group_size not in GROUP_SIZES:
        raise QuantizationError(f"group size must be one of {GROUP_SIZES}, got {group_size}")
    if cols % group_size:
        raise QuantizationError(f"input width {cols} is not a multiple of the group size {group_size}")
    if block_size < 1 or not (math.isfinite(damp) and damp >= 0):
        raise QuantizationError(f"GPTQ needs block_size >= 1 and damp >= 0, got {block_size} and {damp}")
    w = weight.detach().float().clone()
    if not torch.isfinite(w).all():
        raise QuantizationError("the weight has non-finite values")
    h = hessian.detach().to(device=w.device, dtype=torch.float64).clone()
    if not torch.isfinite(h).all():
        raise QuantizationError("the Hessian has non-finite values")

    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.arange(cols, device=w.device)  # the order columns are rounded in
    if act_order:
        # Static groups: every grid is set up front from the weights as given, so the columns can be
        # rounded in any order while the format keeps one grid per consecutive group.
        scales, mins = _static_grids(w, torch.diagonal(h).float(), group_size)
        order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        w, h = w[:, order], h[order][:, order]
    else:  # each group's grid is set when its first column comes up
        scales = torch.empty(rows, cols // group_size, dtype=torch.float16, device=w.device)
        mins = torch.empty_like(scales)
    h_inv = _inverse_cholesky(h, damp).float()  # upper U with U.T U = H^-1
    column_of = order.tolist()
    step = max(block_size // group_size, 1) * group_size
    codes = torch.empty(rows, cols, dtype=torch.uint8, device=w.device)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        block = w[:, i1:i2].clone()  # the block's columns, updated column by column
        errors = torch.empty_like(block)
        h_inv_block = h_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column_index = column_of[i1 + i]
            group = column_index // group_size
            if not act_order and i % group_size == 0:  # the group lies in this block: its columns are up to date
                grid = quantize_int4(block[:, i : i + group_size], group_size)
                scales[:, group], mins[:, group] = grid.scales[:, 0], grid.mins[:, 0]
            scale, low = scales[:, group].float(), mins[:, group].float()
            divisor = torch.where(scale > 0, scale, 1.0)
            column = block[:, i]
            q = ((column - low) / divisor).round_().clamp_(0, 15)
            codes[:, column_index] = q.to(torch.uint8)
            error = (column - (q * scale + low)) / h_inv_block[i, i]
            block[:, i:].addr_(error, h_inv_block[i, i:], alpha=-1)
            errors[:, i] = error
        w[:, i2:].addmm_(errors, h_inv[i1:i2, i2:], alpha=-1)  # the lazy update of the later columns
    return BlockQuantized(4, group_size, pack_int4(codes), scales, mins)


_GRID_SHRINKS = tuple(1.0 - 0.02 * i for i in range(16))  # 1.0 down to 0.7


def _static_grids(
    weight: torch.Tensor, input_energy: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and mins (float16, ``[rows, groups]``) of round-to-nearest int4 grids for ``weight``, each
    (row, group) range ``[min, max]`` scaled toward zero by the factor in ``_GRID_SHRINKS`` that minimises
    that group's rounding error weighted by ``input_energy`` (``H_ii``): a grid that clips a rare extreme
    value can round all the others more finely."""
    rows, cols = weight.shape
    energy = input_energy.view(1, cols // group_size, group_size)
    groups = weight.view(rows, cols // group_size, group_size)
    low, high = groups.amin(dim=2, keepdim=True), groups.amax(dim=2, keepdim=True)
    scales = mins = best_error = None
    for shrink in _GRID_SHRINKS:
        clipped = torch.minimum(torch.maximum(groups, low * shrink), high * shrink).view(rows, cols)
        grid = quantize_int4(clipped, group_size)
        error = ((grid.dequantize() - weight).view_as(groups).pow(2) * energy).sum(dim=2)  # [rows, groups]
        if best_error is None:
            scales, mins, best_error = grid.scales, grid.mins, error
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        scales, mins = torch.where(better, grid.scales, scales), torch.where(better, grid.mins, mins)
    assert scales is not None and mins is not None
    return scales, mins


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, in float64."""
    mean_diagonal = torch.diagonal(h).mean()
    for factor in (1.0, 10.0):
        damped = h + torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (factor * damp * mean_diagonal)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            lower, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info == 0 and torch.isfinite(lower).all():
                return lower
    raise QuantizationError(f"the Hessian is not positive definite, even damped by {10 * damp} x its mean")
