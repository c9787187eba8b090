"""The teacher's targets for a batch of training windows: precomputed top-k, or the teacher run on the spot.

Why top-k by default: full next-token distributions of the default model's 49152-id vocabulary take 192 KiB
per token in float32 (19 GiB for 100k tokens), while its 64 most likely ids (log-probabilities, ids, and the
log of the remaining mass) take 516 bytes. Caching them once before training lets the teacher's weights go
before the student trains, lets a resumed run skip the teacher altogether, and costs the teacher exactly one
forward per window either way. The price is a coarser target: only the top-k ids and one tail bucket (``loss.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from corral.compress.distill.loss import TopKTargets, topk_targets
from corral.compress.distill.model import DenseModel


class TeacherTargets(Protocol):
    """What the trainer distils toward, for the training windows ``window_indices`` (rows of the training
    data) whose tokens are ``input_ids``. Invariant: the same indices give the same targets."""

    def targets(self, window_indices: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor | TopKTargets: ...


@dataclass
class TopKCache:
    """The teacher's top-k targets for every training window, computed once."""

    logprobs: torch.Tensor  # [num_windows, tokens, k] float32
    token_ids: torch.Tensor  # [num_windows, tokens, k] int32 (the vocabulary fits; half of int64)
    tail_logprob: torch.Tensor  # [num_windows, tokens] float32
    temperature: float

    def targets(self, window_indices: torch.Tensor, input_ids: torch.Tensor) -> TopKTargets:
        return TopKTargets(self.logprobs[window_indices], self.token_ids[window_indices].long(),
                           self.tail_logprob[window_indices])

    def state_dict(self) -> dict[str, torch.Tensor | float]:
        return {"logprobs": self.logprobs, "token_ids": self.token_ids, "tail_logprob": self.tail_logprob,
                "temperature": self.temperature}


@dataclass
class OnlineTeacher:
    """The teacher run on each batch: full distributions, the teacher held in memory throughout."""

    model: DenseModel
    dtype: torch.dtype

    @torch.no_grad()
    def targets(self, window_indices: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.logits(input_ids, self.dtype).float()


@torch.no_grad()
def cache_topk(
    teacher: DenseModel,
    windows: torch.Tensor,
    k: int,
    temperature: float,
    batch_size: int,
    dtype: torch.dtype,
    on_batch: Callable[[int, int], None] | None = None,
) -> TopKCache:
    """Top-k targets of ``teacher`` on every window of ``windows`` ``[num_windows, tokens]``;
    ``on_batch(done, total)`` counts windows."""
    parts: list[TopKTargets] = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        parts.append(topk_targets(teacher.logits(batch, dtype), k, temperature))
        if on_batch is not None:
            on_batch(start + len(batch), len(windows))
    return TopKCache(torch.cat([p.logprobs for p in parts]), torch.cat([p.token_ids for p in parts]).int(),
                     torch.cat([p.tail_logprob for p in parts]), temperature)
