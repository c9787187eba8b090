"""A checkpoint's weights as a read-only mapping that reads and converts one tensor per access.

Loading through it holds one tensor at a time in float rather than the whole model, so a model can be
built (and quantized) layer by layer. Names and shapes are known up front, from the file's header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch


class LazyWeights(Mapping[str, torch.Tensor]):
    def __init__(self, shapes: Mapping[str, tuple[int, ...]], read: Callable[[str], torch.Tensor]):
        self.shapes = dict(shapes)
        self._read = read

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def materialize(self) -> dict[str, torch.Tensor]:
        """Every tensor, read now."""
        return {name: self._read(name) for name in self.shapes}
