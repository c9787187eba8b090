"""Token embedding: a float table at load time, which a QuantMethod may then pack."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corral.quantization.base import QuantizedTable, QuantMethod
from corral.quantization.blockwise import BlockLinear, BlockQuantized


class Embedding(nn.Module):
    """``weight[ids]``; the parameter is named like ``nn.Embedding``'s so checkpoints map one to one.
    It is left uninitialized: every weight is overwritten by the checkpoint (and init would touch it all)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.packed: QuantizedTable | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed.lookup(ids)
        return F.embedding(ids, self.weight)

    @torch.no_grad()
    def quantize_(self, method: QuantMethod) -> None:
        """Pack the table if the method packs tables; the float weight is then gone. A table loaded packed
        stays as it is."""
        if self.packed is not None:
            return
        packed = method.quantize_table(self.weight)
        if packed is not None:
            self.packed = packed
            self.weight = None

    def load_blocks_(self, table: BlockQuantized) -> None:
        """Take a table that the checkpoint stores packed."""
        self.packed = BlockLinear(table, None)
        self.weight = None

    def extra_repr(self) -> str:
        kind = "float" if self.packed is None else type(self.packed).__name__
        return f"{self.num_embeddings}, {self.embedding_dim}, {kind}"
