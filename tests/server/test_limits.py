"""RequestLimits at their boundaries: exactly at a limit is allowed, one past it is refused by name."""

from __future__ import annotations

import pytest

from corral.server.limits import LimitExceeded, RequestLimits, check_request

LIMITS = RequestLimits(max_body_bytes=100, max_prompts=4, max_sequences=6, max_stop_strings=2)


def test_exactly_at_each_limit_is_allowed():
    check_request(num_prompts=3, n=2, num_stop_strings=2, limits=LIMITS)  # 6 sequences
    check_request(num_prompts=4, n=1, num_stop_strings=0, limits=LIMITS)


@pytest.mark.parametrize("prompts, n, stops, param", [(5, 1, 0, "prompt"), (4, 2, 0, "n"), (1, 7, 0, "n"),
                                                      (1, 1, 3, "stop")])
def test_one_past_a_limit_is_refused_by_name(prompts, n, stops, param):
    with pytest.raises(LimitExceeded) as caught:
        check_request(prompts, n, stops, LIMITS)
    assert (caught.value.param, caught.value.status) == (param, 400)


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="max_stop_strings"):
        RequestLimits(max_stop_strings=0)
