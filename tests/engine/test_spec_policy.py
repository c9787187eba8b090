"""The adaptive speculation length: the expected-value rule and a request's history."""

from corral.engine.request import Request
from corral.engine.spec_policy import (
    PRIOR_ACCEPTED,
    PRIOR_DRAFTED,
    SpeculationPolicy,
    best_num_drafts,
    expected_tokens,
)
from corral.sample.params import SamplingParams


def test_expected_tokens_follows_the_geometric_series():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


def test_best_length_grows_with_acceptance_and_shrinks_with_cost():
    ks = [best_num_drafts(rate / 10, 8, 0.15) for rate in range(11)]
    assert ks == sorted(ks) and ks[0] == 0 and ks[-1] == 8
    assert best_num_drafts(0.6, 8, 0.05) > best_num_drafts(0.6, 8, 0.5)


def make_request(num_output: int, drafted: int, accepted: int) -> Request:
    request = Request("r", [1, 2, 3], SamplingParams(max_tokens=100), max_model_len=256)
    for _ in range(num_output):
        request.append_token(5)
    request.num_draft_tokens, request.num_accepted_tokens = drafted, accepted
    return request


def test_policy_backs_off_on_rejections_and_probes_now_and_then():
    policy = SpeculationPolicy(6, adaptive=True, fixed_cost_rows=2.0, probe_interval=16)
    fresh = best_num_drafts(PRIOR_ACCEPTED / PRIOR_DRAFTED, 6, 1 / 3)  # batch 1: a draft costs 1 / (2 + 1)
    assert fresh >= 3 and policy.num_spec_tokens(make_request(1, 0, 0)) == fresh  # optimistic start
    assert policy.num_spec_tokens(make_request(5, 40, 38)) == 6
    assert policy.num_spec_tokens(make_request(5, 40, 1)) == 0
    assert policy.num_spec_tokens(make_request(32, 40, 1)) == 1  # a probe on every 16th token
    # in a big batch a draft costs almost a whole decode: only near-certain drafts are worth it
    assert policy.num_spec_tokens(make_request(5, 40, 30), batch_size=1) > policy.num_spec_tokens(
        make_request(5, 40, 30), batch_size=64) == 0
    fixed = SpeculationPolicy(6, adaptive=False)
    assert fixed.num_spec_tokens(make_request(5, 40, 1)) == 6


def test_never_more_drafts_than_tokens_left():
    policy = SpeculationPolicy(6, adaptive=False)
    assert policy.num_spec_tokens(make_request(97, 0, 0)) == 2  # 3 tokens left: 2 drafts + 1
    request = Request("r", [1] * 250, SamplingParams(), max_model_len=256)
    request.append_token(5)
    assert policy.num_spec_tokens(request) == 4  # the context's 6 tokens after the prompt: 1 + 4 + 1
