"""N-gram (prompt lookup) proposer: if the sequence's last ``n`` tokens occurred earlier in it, propose the
tokens that followed there. Free to compute and often right when the output copies its input: summaries and
edits of a given text, code that repeats names and lines. Longer matches are tried first (``n`` from
``prompt_lookup_max`` down to ``prompt_lookup_min``); among equal ones the most recent wins."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from corral.engine.proposer import Draft
from corral.engine.request import Request


class NgramProposer:
    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int):
        self.prompt_lookup_min = prompt_lookup_min
        self.prompt_lookup_max = prompt_lookup_max

    def propose(self, requests: Sequence[Request], max_num_tokens: Sequence[int]) -> list[Draft]:
        return [
            Draft(find_continuation(r.all_token_ids, self.prompt_lookup_min, self.prompt_lookup_max, k))
            for r, k in zip(requests, max_num_tokens, strict=True)
        ]

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        pass  # stateless


def find_continuation(token_ids: Sequence[int], min_n: int, max_n: int, num_tokens: int) -> list[int]:
    """Up to ``num_tokens`` tokens that followed the most recent earlier occurrence of the longest suffix of
    ``token_ids`` (``min_n`` .. ``max_n`` tokens long) that did occur earlier; [] when none did."""
    if num_tokens < 1 or len(token_ids) <= min_n:
        return []
    tokens = np.asarray(token_ids, dtype=np.int64)
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        # windows starting at 0 .. len - n - 1: each has at least one token after it, and none is the suffix
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
        matches = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if matches.size:
            start = int(matches[-1]) + n
            return tokens[start : start + num_tokens].tolist()
    return []
