"""The QuantMethod protocol: turn a float linear weight into a packed one that computes the same product.

A method is chosen once at start-up (``runtime.py``) and applied to every linear layer after the float
weights are loaded; the float weights are then dropped, so memory really shrinks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
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


class QuantizedTable(Protocol):
    """A packed lookup table (the token embedding)."""

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:  # [num_ids] -> [num_ids, width]
        ...

    def nbytes(self) -> int:
        ...


class QuantMethod(Protocol):
    name: str
    quantizes_activations: bool  # True: smooth activation outliers into the weights first

    def quantize(
        self, weight: torch.Tensor, bias: torch.Tensor | None, input_scales: torch.Tensor | None = None
    ) -> QuantizedLinear:
        """Pack ``weight`` ``[out_features, in_features]``, times ``input_scales`` per input channel if given
        (SmoothQuant's folding, without a float copy of the product); QuantizationError if it cannot."""
        ...

    def quantize_table(self, table: torch.Tensor) -> QuantizedTable | None:
        """Pack an embedding table ``[num_rows, width]``, or None to keep it in float."""
        ...
