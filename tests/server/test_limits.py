"""RequestLimits at their boundaries: exactly at a limit is allowed, one past it is refused by name."""

from __future__ import annotations

import pytest

from corral.server.api_error import APIError
from corral.server.limits import RequestLimits, check_request

LIMITS = RequestLimits(max_body_bytes=100, max_prompts=4, max_sequences=6, max_stop_strings=2)


def test_exactly_at_each_limit_is_allowed():
    check_request(num_prompts=3, n=2, num_stop_strings=2, num_bad_words=2, limits=LIMITS)  # 6 sequences
    check_request(num_prompts=4, n=1, num_stop_strings=0, num_bad_words=0, limits=LIMITS)


@pytest.mark.parametrize("prompts, n, stops, bad_words, param", [
    (5, 1, 0, 0, "prompt"), (4, 2, 0, 0, "n"), (1, 7, 0, 0, "n"), (1, 1, 3, 0, "stop"), (1, 1, 0, 3, "bad_words")])
def test_one_past_a_limit_is_refused_by_name(prompts, n, stops, bad_words, param):
    with pytest.raises(APIError) as caught:
        check_request(prompts, n, stops, bad_words, LIMITS)
    assert (caught.value.param, caught.value.status, caught.value.code) == (param, 400, "limit_exceeded")


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="max_stop_strings"):
        RequestLimits(max_stop_strings=0)
