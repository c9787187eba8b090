"""The per-row scaling around an int8 linear whose quantizer takes one scale per call (fbgemm's dynamic
linear): rows go in divided by their own max |x|, with a pinning row ``[1, -1, 0, ...]`` appended so the
call's range is exactly [-1, 1]; the outputs come back multiplied by the same maxima (plus the bias).

The C++ kernels do each side in one call when built (bit-identical: the same IEEE operations, each
rounded once); the torch references below define the result.
"""

from __future__ import annotations

import torch

from corral.kernels import cpu_extension


def pinning_row(width: int) -> torch.Tensor:
    pin = torch.zeros(1, width)
    pin[0, 0], pin[0, min(1, width - 1)] = 1.0, -1.0
    return pin


def unit_rows_with_pin_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    row_absmax = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_min_(1e-30)
    return torch.cat((x / row_absmax, pinning_row(x.shape[1]).to(x.dtype))), row_absmax


def rescale_rows_reference(y: torch.Tensor, row_absmax: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = y[:-1].mul_(row_absmax)
    return out if bias is None else out.add_(bias)


def unit_rows_with_pin(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([num_rows + 1, width] rows / max|row| then the pinning row, [num_rows, 1] the maxima)``."""
    kernels = _kernels_for(x)
    if kernels is not None:
        return kernels.unit_rows_with_pin(x)
    return unit_rows_with_pin_reference(x)


def rescale_rows(y: torch.Tensor, row_absmax: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y[:-1] * row_absmax (+ bias)``, in place in ``y`` (``[num_rows + 1, n]``, the pin's row last)."""
    kernels = _kernels_for(y)
    if kernels is not None and y.is_contiguous():
        return kernels.rescale_rows(y, row_absmax, bias)
    return rescale_rows_reference(y, row_absmax, bias)


def _kernels_for(x: torch.Tensor):
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        return None
    return cpu_extension.load()
