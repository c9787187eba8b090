"""The tokens each request may produce at each logits row of a step, as one bitmask: a grammar's next tokens
(structured output, tool calls) and a fixed ``allowed_token_ids`` set, intersected where a request has both.

With speculative decoding a request owns ``1 + drafts`` rows, row ``j`` scoring the token after ``j`` drafts. Its
grammar is walked through the drafts it accepts to fill those rows, then rolled back: the drafts become output only
once the target model accepts them. A draft the grammar refuses gets probability 0 in its row, so the check
rejects it there and the rows after it are never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from corral.engine.request import Request


def allowed_token_masks(
    requests: Sequence[Request], drafts: Sequence[Sequence[int]], first_rows: Sequence[int], vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(logits rows [R] int64, bitmask [R, ceil(vocab / 32)] int32) for every row of every request that has a
    grammar or ``allowed_token_ids`` (request ``i`` at rows ``first_rows[i]`` to ``first_rows[i] + len(drafts[i])``);
    None when no request is constrained."""
    constrained = [
        i for i, r in enumerate(requests) if r.grammar is not None or r.sampling_params.allowed_token_ids is not None
    ]
    if not constrained:
        return None
    num_words = (vocab_size + 31) // 32
    rows: list[int] = []
    bitmask = torch.full((sum(len(drafts[i]) + 1 for i in constrained), num_words), -1, dtype=torch.int32)
    for i in constrained:
        request, start = requests[i], len(rows)
        rows.extend(range(first_rows[i], first_rows[i] + len(drafts[i]) + 1))
        if request.grammar is not None:
            _fill_grammar_rows(request, list(drafts[i]), bitmask, start)
        allowed = request.sampling_params.allowed_token_ids
        if allowed is not None:
            bitmask[start : len(rows)] &= token_bitmask(allowed, vocab_size)
    return torch.tensor(rows, dtype=torch.int64), bitmask


def _fill_grammar_rows(request: Request, drafts: list[int], bitmask: torch.Tensor, start: int) -> None:
    grammar = request.grammar
    assert grammar is not None
    tokens_left = request.max_tokens - request.num_output_tokens  # at row 0; one fewer at each row after
    grammar.fill_bitmask(bitmask, start, tokens_left)
    accepted = filled = 0  # drafts walked through; rows start .. start + filled hold the grammar's masks
    for token_id in drafts[: grammar.num_valid(drafts)]:
        # EOS, or a token after which nothing may follow, ends the request if the check accepts it
        if token_id in request.eos_token_ids or not grammar.accept(token_id):
            break
        accepted += 1
        if grammar.is_terminated():
            break
        grammar.fill_bitmask(bitmask, start + accepted, tokens_left - accepted)
        filled = accepted
    if accepted:
        grammar.rollback(accepted)
    # Rows past the last one filled are never used (a refused draft or EOS ends the check before them); they
    # copy it so that no row is all -inf.
    bitmask[start + filled + 1 : start + len(drafts) + 1] = bitmask[start + filled]


@lru_cache(maxsize=64)
def token_bitmask(token_ids: tuple[int, ...], vocab_size: int) -> torch.Tensor:
    """The bitmask row ([ceil(vocab / 32)] int32) with exactly ``token_ids`` allowed."""
    bits = np.zeros(((vocab_size + 31) // 32) * 32, dtype=np.uint8)
    bits[[t for t in token_ids if t < vocab_size]] = 1
    return torch.from_numpy(np.packbits(bits, bitorder="little").view(np.int32).copy())
