"""The QuantMethod protocol: turn a float linear weight into a packed one that computes the same product.

A method is chosen once at start-up (``runtime.py``) and applied to every linear layer after the float
weights are loaded; the float weights are then dropped, so memory really shrinks.
"""

from __future__ import annotations

from typing import Protocol

import torch


class QuantizedLinear(Protocol):
    """A packed linear weight. ``apply(x)`` approximates ``x @ W.T + b`` within the format's error bound
    and, for every method here, gives each row of ``x`` a result that does not depend on the other rows."""

    in_features: int
    out_features: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # [num_rows, in_features] -> [num_rows, out_features]
        ...

    def nbytes(self) -> int:
        """Bytes held by the packed weight (and bias)."""
        ...


class QuantMethod(Protocol):
    name: str
    quantizes_activations: bool  # True: smooth activation outliers into the weights first

    def quantize(self, weight: torch.Tensor, bias: torch.Tensor | None) -> QuantizedLinear:
        """Pack ``weight`` ``[out_features, in_features]``; raises QuantizationError if it cannot."""
        ...
