"""How often the target would accept a draft head's tokens, measured on held-out features.

Speculative sampling accepts a token drawn from the draft's distribution ``q`` with probability
``sum_v min(p(v), q(v))`` where ``p`` is the target's (Leviathan et al., 2023), both after the request's
temperature and top-p. ``q`` is 0 outside the head's ids. Step ``s`` is measured as the head drafts it: fed its
own feature from step ``s - 1`` and the true token (the one the target sampled), so each number is the chance
of accepting draft token ``s`` given that the ones before it were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.compress.distill.head_data import FeatureSet
from corral.models.draft_head import DraftHead
from corral.sample.ops import apply_top_k_top_p


@dataclass(frozen=True)
class HeadEvaluation:
    """Per draft step (index 0 is step 1), means over the held-out rows."""

    acceptance: list[float]  # sum_v min(p'(v), q'(v)) after temperature and top-p
    greedy_agreement: list[float]  # the head's most likely id is the target's
    num_rows: int
    temperature: float
    top_p: float


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution a request samples from ``logits`` ``[rows, n]``: temperature, then the top-p nucleus
    (the engine's own filter); temperature 0 is greedy, all mass on the most likely id."""
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_p < 1.0:
        logits = apply_top_k_top_p(logits, None, 0, torch.full((len(logits),), top_p, dtype=logits.dtype))
    return logits.softmax(-1)


def acceptance(target_logits: torch.Tensor, head_logits: torch.Tensor, head_token_ids: torch.Tensor,
               temperature: float, top_p: float) -> torch.Tensor:
    """``sum_v min(p'(v), q'(v))`` per row ``[rows]``: ``target_logits`` ``[rows, vocab]``, ``head_logits``
    ``[rows, head_size]`` scoring ``head_token_ids``; the head's distribution is filtered over its own ids."""
    p = sampling_probs(target_logits.float(), temperature, top_p)
    q = torch.zeros_like(p)
    q[:, head_token_ids] = sampling_probs(head_logits.float(), temperature, top_p)
    return torch.minimum(p, q).sum(-1)


@torch.no_grad()
def evaluate_head(head: DraftHead, data: FeatureSet, embed: torch.Tensor, lm_head: torch.Tensor, depth: int,
                  temperature: float, top_p: float, batch_size: int = 256) -> HeadEvaluation:
    """Acceptance and greedy agreement of each of ``depth`` draft steps over every window of ``data``;
    ``embed`` and ``lm_head`` ``[vocab, hidden]`` are the target's."""
    rows = data.rows(depth)
    accepted = torch.zeros(depth, dtype=torch.float64)
    agreed = torch.zeros(depth, dtype=torch.float64)
    for begin in range(0, len(rows), batch_size):
        batch = rows[begin:begin + batch_size]
        features = data.features[batch]  # [B, hidden]
        for step in range(depth):
            position = batch + step + 1
            features, head_logits = head(features, embed[data.token_ids[position]])
            target_logits = data.features[position] @ lm_head.T  # [B, vocab]
            accepted[step] += acceptance(target_logits, head_logits, head.head_token_ids, temperature, top_p).sum()
            agreed[step] += (head.head_token_ids[head_logits.argmax(-1)] == target_logits.argmax(-1)).sum()
    num_rows = max(1, len(rows))
    return HeadEvaluation((accepted / num_rows).tolist(), (agreed / num_rows).tolist(), len(rows),
                          temperature, top_p)
