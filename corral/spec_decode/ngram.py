"""N-gram (prompt lookup) proposer: if the sequence's last ``n`` tokens occurred earlier in it, propose the
tokens that followed there. Free to compute and often right when the output copies its input: summaries and
edits of a given text, code that repeats names and lines. Longer matches are tried first (``n`` from
``prompt_lookup_max`` down to ``prompt_lookup_min``); among equal ones the most recent wins."""

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
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        # windows starting at 0 .. len - n - 1: each has at least one token after it, and none is the suffix
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
        matches = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if matches.size:
            start = int(matches[-1]) + n
            return Match(tokens[start : start + num_tokens].tolist(), n)
    return Match([], 0)
