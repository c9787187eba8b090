"""RMSNorm of float32 rows: the C++ kernel when built (one pass; within an ulp of torch, its mean of
squares summed in double), else torch's fused ``rms_norm``, the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.kernels import cpu_extension


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, weight.shape, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension of ``x`` ``[rows, width]``."""
    kernels = cpu_extension.load()
    if kernels is not None and x.device.type == "cpu" and x.dim() == 2 and x.dtype == weight.dtype == torch.float32:
        return kernels.rms_norm(x, weight, eps)
    return rms_norm_reference(x, weight, eps)
