"""Held-out quality before and after: perplexity of each model on the held-out windows, and how often the
student's greedy next token is the teacher's.

With a draft's reduced head both models are scored as distributions over the head's ids (the teacher's
renormalized there), on the targets among them, and agreement compares their argmax within the head.

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
                       dtype: torch.dtype) -> tuple[torch.Tensor, float, int]:
    """The model's argmax columns ``[num_windows, tokens]``, its summed next-token NLL over ``windows`` and the
    number of targets scored (with a reduced head: those among its ids, the NLL of the head's distribution)."""
    greedy, total_nll, num_targets = [], 0.0, 0
    for batch in windows.split(batch_size):
        logits = model.logits(batch, dtype).float()  # [batch, tokens, head size]
        greedy.append(logits.argmax(-1))
        targets = model.head_columns(batch[:, 1:]).reshape(-1)
        num_targets += int((targets >= 0).sum())
        total_nll += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets, ignore_index=-100,
                                     reduction="sum").item()
    return torch.cat(greedy), total_nll, num_targets


def score(model: DenseModel, windows: torch.Tensor, batch_size: int, dtype: torch.dtype,
          teacher_greedy_ids: torch.Tensor | None) -> tuple[HeldoutScore, torch.Tensor]:
    """The model's held-out score, agreement measured against ``teacher_greedy_ids`` where given; also its own
    greedy ids (the teacher's are kept for the student's later scores)."""
    greedy, total_nll, num_targets = greedy_ids_and_nll(model, windows, batch_size, dtype)
    agreement = None
    if teacher_greedy_ids is not None:
        agreement = float((greedy == teacher_greedy_ids).float().mean())
    perplexity = math.exp(total_nll / num_targets) if num_targets else math.inf
    return HeldoutScore(perplexity, num_targets, agreement), greedy
