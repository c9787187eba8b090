"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before INT8.

For a linear layer ``y = x @ W.T`` and per-input-channel scales ``s``, ``y = (x / s) @ (W * s).T``
exactly. Dividing by ``s`` is folded into whatever produced ``x`` (a norm's weight, V's or up's rows),
so it costs nothing at run time, while the per-row INT8 quantization of ``x / s`` loses far less.
"""

from __future__ import annotations

import torch


def smoothing_scales(input_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``, for ``weight`` ``[out_features, in_features]``."""
    weight_absmax = weight.abs().amax(dim=0).float().clamp_min(1e-5)
    scales = input_absmax.clamp_min(1e-5).pow(alpha) / weight_absmax.pow(1 - alpha)
    return scales.clamp_min(1e-5).to(weight.dtype)
