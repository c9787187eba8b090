"""Held-out quality before and after: perplexity of each model on the held-out windows, and how often the
student's greedy next token is the teacher's.

Each window is scored from its own start (no context carried over from the previous window), so these
perplexities run a little higher than ``corral eval perplexity``'s sliding window on the same text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from corral.compress.distill.model import DenseModel


@dataclass(frozen=True)
class HeldoutScore:
    perplexity: float
    num_tokens: int  # scored next-token targets
    greedy_agreement: float | None  # share of positions whose argmax is the teacher's (None: the teacher itself)


@torch.no_grad()
def greedy_ids_and_nll(model: DenseModel, windows: torch.Tensor, batch_size: int,
                       dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """The model's argmax ids ``[num_windows, tokens]`` and its summed next-token NLL over ``windows``."""
    greedy, total_nll = [], 0.0
    for batch in windows.split(batch_size):
        logits = model.logits(batch, dtype).float()  # [batch, tokens, vocab]
        greedy.append(logits.argmax(-1))
        total_nll += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                     reduction="sum").item()
    return torch.cat(greedy), total_nll


def score(model: DenseModel, windows: torch.Tensor, batch_size: int, dtype: torch.dtype,
          teacher_greedy_ids: torch.Tensor | None) -> tuple[HeldoutScore, torch.Tensor]:
    """The model's held-out score, agreement measured against ``teacher_greedy_ids`` where given; also its own
    greedy ids (the teacher's are kept for the student's later scores)."""
    greedy, total_nll = greedy_ids_and_nll(model, windows, batch_size, dtype)
    num_targets = windows.shape[0] * (windows.shape[1] - 1)
    agreement = None
    if teacher_greedy_ids is not None:
        agreement = float((greedy == teacher_greedy_ids).float().mean())
    return HeldoutScore(math.exp(total_nll / num_targets), num_targets, agreement), greedy
