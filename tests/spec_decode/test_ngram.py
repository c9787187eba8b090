"""Prompt lookup: longest suffix first, most recent occurrence, bounded length."""

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.engine.request import Request
from corral.sample.params import SamplingParams
from corral.spec_decode.ngram import NgramProposer, find_match


def test_proposes_what_followed_the_most_recent_match():
    tokens = [1, 2, 3, 9, 1, 2, 3, 8, 7, 1, 2, 3]
    assert find_match(tokens, 1, 3, 2).token_ids == [8, 7]
    assert find_match(tokens, 1, 3, 10).token_ids == [8, 7, 1, 2, 3]  # runs up to the end of the sequence


def test_longer_suffixes_win_over_recent_short_ones():
    tokens = [5, 6, 7, 1, 0, 7, 2, 5, 6, 7]
    assert find_match(tokens, 1, 3, 1) == ([1], 3)  # [5, 6, 7] matched, not the later [7]
    assert find_match(tokens, 1, 1, 1) == ([2], 1)


def test_no_match_or_too_short_proposes_nothing():
    assert find_match([1, 2, 3, 4], 1, 3, 4) == ([], 0)
    assert find_match([1, 1], 2, 3, 4).token_ids == []
    assert find_match([1, 2, 1], 1, 2, 0).token_ids == []
    assert find_match([4, 4, 4, 4], 2, 2, 3).token_ids == [4]  # the most recent match leaves one token after it


def test_proposer_respects_each_requests_limit():
    proposer = NgramProposer(1, 2)
    requests = [Request(str(i), [1, 2, 3, 1, 2], SamplingParams()) for i in range(2)]
    drafts = proposer.propose(requests, [1, 3])
    assert [d.token_ids for d in drafts] == [[3], [3, 1, 2]]
    assert all(d.probs is None for d in drafts)
    assert [d.bucket for d in drafts] == [2, 2]  # the matched length: [1, 2] occurred before


def _reference_match(tokens: list[int], min_n: int, max_n: int, num_tokens: int) -> tuple[list[int], int]:
    """The definition, spelled out: every length from the longest, every earlier window from the latest."""
    if num_tokens < 1:
        return [], 0
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tokens[-n:]:
                return tokens[start + n : start + n + num_tokens], n
    return [], 0


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.integers(0, 3), max_size=40), min_n=st.integers(1, 4), extra=st.integers(0, 5),
       num_tokens=st.integers(0, 6))
def test_matches_the_definition(tokens, min_n, extra, num_tokens):
    assert tuple(find_match(tokens, min_n, min_n + extra, num_tokens)) == _reference_match(
        tokens, min_n, min_n + extra, num_tokens)
