"""N-gram (prompt lookup) proposer: if the sequence's last ``n`` tokens occurred earlier in it, propose the
tokens that followed there. Free to compute and often right when the output copies its input: summaries and
edits of a given text, code that repeats names and lines. The longest suffix that occurred earlier wins
(``n`` at most ``prompt_lookup_max``, at least ``prompt_lookup_min``); among equal ones the most recent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from corral.engine.proposer import Draft
from corral.engine.request import Request


class NgramProposer:
    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int):
        self.prompt_lookup_min = prompt_lookup_min
        self.prompt_lookup_max = prompt_lookup_max

    def propose(self, requests: Sequence[Request], max_num_tokens: Sequence[int]) -> list[Draft]:
        drafts = []
        for request, k in zip(requests, max_num_tokens, strict=True):
            match = find_match(request.all_token_ids, self.prompt_lookup_min, self.prompt_lookup_max, k)
            drafts.append(Draft(match.token_ids, bucket=match.length))
        return drafts

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        pass  # stateless


class Match(NamedTuple):
    token_ids: list[int]  # what followed the match
    length: int  # of the matched suffix; 0 when none matched


def find_match(token_ids: Sequence[int], min_n: int, max_n: int, num_tokens: int) -> Match:
    """Up to ``num_tokens`` tokens that followed the most recent earlier occurrence of the longest suffix of
    ``token_ids`` (``min_n`` .. ``max_n`` tokens long) that did occur earlier; none when none did."""
    if num_tokens < 1 or len(token_ids) <= min_n:
        return Match([], 0)
    tokens = np.asarray(token_ids, dtype=np.int64)
    # Every earlier occurrence of the suffix ends on an earlier copy of the last token: one pass over the
    # sequence finds those, and each is then extended backwards while it keeps matching (runs every step,
    # so it must cost far less than trying each length over the whole sequence).
    ends = np.flatnonzero(tokens[:-1] == tokens[-1])  # where the matches of length 1 end
    length = 1
    for n in range(2, min(max_n, len(tokens) - 1) + 1):
        longer = ends[ends >= n - 1]
        longer = longer[tokens[longer - (n - 1)] == tokens[-n]]
        if not longer.size:
            break
        ends, length = longer, n
    if not ends.size or length < min_n:
        return Match([], 0)
    start = int(ends[-1]) + 1
    return Match(tokens[start : start + num_tokens].tolist(), length)
