"""Activation-aware weight quantization (AWQ, Lin et al., 2024) for int4 blocks.

A few input channels carry much larger activations than the rest, and the weights they multiply matter most.
Scaling those weight columns up by ``s`` before rounding (and the activations down by ``s``, folded into their
producer) rounds them on a finer relative grid. ``s = mean|x|^alpha``, normalised, with ``alpha`` searched on
a grid to minimise the error of the layer's output on calibration activations, measured through the real
packed product. A second search then clips each group's range (``|w| <= r * max|w|``) where rounding the
outliers costs more than clipping them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from corral.quantization.blockwise import BlockLinear, quantize_int4

_SCALE_GRID = 20  # alpha in 0, 0.05, ..., 0.95
_CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(10))  # 1.0 down to 0.55
_CLIP_TOKENS = 512  # calibration rows used by the clipping search
_CLIP_ROWS_PER_PASS = 256


def search_input_scales(
    inputs: torch.Tensor,  # [num_tokens, in_features]
    weight: torch.Tensor,  # [out_features, in_features]
    group_size: int,
    tie: Callable[[torch.Tensor], torch.Tensor] | None = None,
    activation_bits: int = 8,
) -> tuple[torch.Tensor, float, float]:
    """The per-input-channel scales that minimise ``|x W^T - Q(W s) (x / s)|^2`` over the grid of alphas,
    with ``tie`` applied to each candidate (a constraint the folding imposes), the product run as the
    packed model will run it (inputs rounded to ``activation_bits``). Returns the scales, their mean squared
    output error, and that of plain rounding (alpha 0, every scale 1)."""
    inputs, weight = inputs.float(), weight.float()
    reference = inputs @ weight.T
    channel_mean = inputs.abs().mean(dim=0).clamp_min(1e-4)
    best_scales, best_error, rtn_error = torch.ones_like(channel_mean), float("inf"), float("inf")
    for step in range(_SCALE_GRID):
        scales = channel_mean.pow(step / _SCALE_GRID)
        scales = scales / (scales.max() * scales.min()).sqrt()
        if tie is not None:
            scales = tie(scales)
        packed = BlockLinear(quantize_int4(weight * scales, group_size), None, activation_bits)
        error = (packed.apply(inputs / scales) - reference).pow(2).mean().item()
        if step == 0:
            rtn_error = error
        if error < best_error:
            best_scales, best_error = scales, error
    return best_scales, best_error, rtn_error


def search_clip_ratios(inputs: torch.Tensor, weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per (row, group) of ``weight``, the ratio ``r`` that minimises that group's share of the output error
    when the group is clipped to ``|w| <= r * max|w|`` and rounded: ``[out_features, in_features / group_size]``."""
    inputs = inputs[:: max(1, inputs.shape[0] // _CLIP_TOKENS)].float()
    num_rows, width = weight.shape
    num_groups = width // group_size
    x = inputs.view(-1, num_groups, group_size)  # [tokens, groups, group_size]
    ratios = torch.ones(num_rows, num_groups)
    for start in range(0, num_rows, _CLIP_ROWS_PER_PASS):
        w = weight[start : start + _CLIP_ROWS_PER_PASS].float()
        w_groups = w.view(len(w), num_groups, group_size)
        absmax = w_groups.abs().amax(dim=2, keepdim=True)
        best = torch.full((len(w), num_groups), float("inf"))
        for ratio in _CLIP_RATIOS:
            bound = absmax * ratio
            clipped = torch.maximum(torch.minimum(w_groups, bound), -bound).reshape_as(w)
            delta = (quantize_int4(clipped, group_size).dequantize() - w).view_as(w_groups)
            # each group's partial output error, summed over tokens: [rows, groups]
            error = torch.einsum("tgk,rgk->trg", x, delta).pow(2).sum(dim=0)
            better = error < best
            best = torch.where(better, error, best)
            ratios[start : start + len(w)][better] = ratio
    return ratios


def clip_groups(weight: torch.Tensor, ratios: torch.Tensor, group_size: int) -> torch.Tensor:
    """``weight`` with each (row, group) clipped to ``|w| <= ratio * max|w|`` of that group."""
    groups = weight.float().view(weight.shape[0], -1, group_size)
    bound = groups.abs().amax(dim=2, keepdim=True) * ratios.unsqueeze(2)
    return torch.maximum(torch.minimum(groups, bound), -bound).reshape_as(weight)
