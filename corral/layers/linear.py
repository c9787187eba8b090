"""Linear layer whose weight is float at load time and may then be packed by a QuantMethod."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corral.quantization.base import QuantizedLinear, QuantMethod
from corral.quantization.blockwise import BlockLinear, BlockQuantized


class Linear(nn.Module):
    """``y = x @ W.T + b``. Parameters are named like ``nn.Linear``'s so checkpoints map one to one;
    after ``quantize_`` the float parameters are gone and the packed weight computes the product."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.packed: QuantizedLinear | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> Linear:
        layer = cls(weight.shape[1], weight.shape[0])
        layer.weight = nn.Parameter(weight, requires_grad=False)
        return layer

    @classmethod
    def from_packed(cls, packed: QuantizedLinear) -> Linear:
        layer = cls(packed.in_features, packed.out_features)
        layer.packed, layer.weight = packed, None
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed.apply(x)
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def quantize_(self, method: QuantMethod, input_scales: torch.Tensor | None = None) -> None:
        """Pack ``weight`` (times ``input_scales`` per input channel, if given) and drop the float one;
        a layer loaded packed stays as it is."""
        if self.packed is not None:
            return
        self.packed = method.quantize(self.weight, self.bias, input_scales)
        self.weight = None
        self.bias = None

    def load_blocks_(self, weight: BlockQuantized, activation_bits: int = 8) -> None:
        """Take weights that a checkpoint stores packed (the bias, if any, must be loaded already)."""
        self.packed = BlockLinear(weight, self.bias, activation_bits)
        self.weight = None
        self.bias = None

    def extra_repr(self) -> str:
        kind = "float" if self.packed is None else type(self.packed).__name__
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"
