"""The adaptive speculation length: the expected-value rule, per-position acceptance by bucket, a request's
history against the engine's, and the limits every policy keeps."""

import itertools

from corral.engine.request import Request
from corral.engine.spec_policy import (
    MAX_PROBE_BACKOFF,
    PRIOR_ACCEPTANCE,
    HazardCounts,
    SpeculationPolicy,
    best_num_drafts,
    expected_tokens,
)
from corral.sample.params import SamplingParams


def test_expected_tokens_multiplies_the_chances_along_the_run():
    assert expected_tokens([0.0] * 4, 4) == 1.0
    assert expected_tokens([1.0] * 4, 4) == 5.0
    assert abs(expected_tokens([0.5, 0.5], 2) - 1.75) < 1e-12
    assert abs(expected_tokens([0.9, 0.5, 1.0], 3) - (1 + 0.9 + 0.45 + 0.45)) < 1e-12


def test_best_length_grows_with_acceptance_and_shrinks_with_cost():
    ks = [best_num_drafts([rate / 10] * 8, 8, 0.15) for rate in range(11)]
    assert ks == sorted(ks) and ks[0] == 0 and ks[-1] == 8
    assert best_num_drafts([0.6] * 8, 8, 0.05) > best_num_drafts([0.6] * 8, 8, 0.5)
    # a run that, once begun, goes on: only the first draft is doubtful, so long checks pay where they would
    # not for drafts accepted independently at the same first rate
    assert best_num_drafts([0.5] + [0.99] * 7, 8, 0.3) == 8
    assert best_num_drafts([0.5] * 8, 8, 0.3) <= 2


def test_hazard_counts_see_only_the_positions_a_check_reached():
    counts = HazardCounts.empty(4)
    counts.record(num_drafts=4, num_accepted=1)  # draft 1 kept, draft 2 rejected, 3 and 4 never judged
    counts.record(num_drafts=2, num_accepted=2)
    assert counts.reached == [2, 2, 0, 0] and counts.accepted == [2, 1, 0, 0]
    counts.record(num_drafts=1, num_accepted=0, decay=0.5)
    assert counts.reached == [2, 1, 0, 0] and counts.accepted == [1, 0.5, 0, 0]


def make_request(request_id: str = "r", num_output: int = 1) -> Request:
    request = Request(request_id, [1, 2, 3], SamplingParams(max_tokens=100), max_model_len=256)
    for _ in range(num_output):
        request.append_token(5)
    return request


def check(policy: SpeculationPolicy, request: Request, bucket: int, num_drafts: int, num_accepted: int) -> None:
    assert policy.trim(request, num_drafts, bucket) >= 0
    policy.record(request, num_drafts, num_accepted)


def test_a_fresh_request_speculates_then_each_bucket_follows_its_own_evidence():
    policy = SpeculationPolicy(6, fixed_cost_rows=2.0)
    request = make_request()
    assert policy.acceptance(request, bucket=3) == [PRIOR_ACCEPTANCE] * 6
    fresh = best_num_drafts([PRIOR_ACCEPTANCE] * 6, 6, 1 / 3)  # batch 1: a draft costs 1 / (2 + 1)
    assert fresh >= 3 and policy.num_spec_tokens(request) == fresh  # optimistic start
    for _ in range(10):
        check(policy, request, bucket=4, num_drafts=6, num_accepted=6)  # long matches: always right
        check(policy, request, bucket=1, num_drafts=6, num_accepted=0)  # one-token matches: always wrong
    assert policy.trim(request, 6, bucket=4) == 6
    assert policy.trim(request, 6, bucket=1) == 0
    assert policy.trim(request, 1, bucket=1) == 1  # a probe is never trimmed away
    assert policy.num_spec_tokens(request) == 6  # bounded by the best bucket


def test_a_request_backs_off_on_rejections_and_probes_now_and_then():
    policy = SpeculationPolicy(6, fixed_cost_rows=2.0, probe_interval=16)
    request = make_request(num_output=5)
    for _ in range(12):
        check(policy, request, bucket=0, num_drafts=3, num_accepted=0)
    assert policy.num_spec_tokens(request) == 0
    probing = make_request(num_output=32)  # a probe on every 16th token
    policy.record(probing, 0, 0)
    for _ in range(12):
        check(policy, probing, bucket=0, num_drafts=3, num_accepted=0)
    assert policy.num_spec_tokens(probing) == 1


def test_a_new_request_starts_from_what_the_engine_has_seen():
    policy = SpeculationPolicy(6, fixed_cost_rows=2.0)
    for i in range(30):
        check(policy, make_request(f"old{i}"), bucket=2, num_drafts=6, num_accepted=0)
    fresh = make_request("fresh")
    assert policy.trim(fresh, 6, bucket=2) == 0  # the engine's evidence, before any of its own
    for _ in range(10):
        check(policy, fresh, bucket=2, num_drafts=6, num_accepted=6)
    assert policy.trim(fresh, 6, bucket=2) == 6  # its own evidence outweighs the engine's
    policy.remove_requests(["fresh"])
    assert policy.trim(make_request("fresh"), 6, bucket=2) < 6  # forgotten: back to the engine's view


def test_big_batches_only_take_near_certain_drafts():
    policy = SpeculationPolicy(6, fixed_cost_rows=2.0)
    request = make_request()
    for accepted in (0, 6) * 10:  # half the checks keep every draft, half none
        check(policy, request, bucket=0, num_drafts=6, num_accepted=accepted)
    assert policy.num_spec_tokens(request, batch_size=1) > policy.num_spec_tokens(request, batch_size=64) == 0


def test_never_more_drafts_than_tokens_left():
    policy = SpeculationPolicy(6, adaptive=False)
    assert policy.num_spec_tokens(make_request(num_output=97)) == 2  # 3 tokens left: 2 drafts + 1
    request = Request("r", [1] * 250, SamplingParams(), max_model_len=256)
    request.append_token(5)
    assert policy.num_spec_tokens(request) == 4  # the context's 6 tokens after the prompt: 1 + 4 + 1
    adaptive = SpeculationPolicy(6)
    request = make_request(num_output=97)
    for _ in range(10):
        check(adaptive, request, bucket=0, num_drafts=2, num_accepted=2)
    assert adaptive.num_spec_tokens(request) == 2
    fixed = SpeculationPolicy(6, adaptive=False)
    request = make_request()
    for _ in range(10):
        check(fixed, request, bucket=0, num_drafts=6, num_accepted=0)
    assert fixed.num_spec_tokens(request) == 6 and fixed.trim(request, 6, bucket=0) == 6


def test_a_seeded_random_request_learns_across_its_own_buckets():
    """Seeded random requests go by their own history only; failures in some buckets lower the others too."""
    policy = SpeculationPolicy(6, fixed_cost_rows=2.0)
    seeded = SamplingParams(max_tokens=100, temperature=0.8, seed=7)
    for i in range(30):  # the engine sees always-right drafts in bucket 5 from other requests
        check(policy, make_request(f"old{i}"), bucket=5, num_drafts=6, num_accepted=6)
    request = Request("seeded", [1, 2, 3], seeded, max_model_len=256)
    request.append_token(5)
    assert policy.acceptance(request, bucket=5) == [PRIOR_ACCEPTANCE] * 6  # not the engine's view
    for bucket in (1, 2, 3):
        for _ in range(3):
            check(policy, request, bucket=bucket, num_drafts=6, num_accepted=0)
    assert policy.acceptance(request, bucket=5)[0] < 0.3  # never checked there, yet no longer optimistic
    assert policy.trim(request, 6, bucket=5) == 0
    assert policy.num_spec_tokens(request) <= 1  # a probe at most


def probes_in(policy: SpeculationPolicy, request: Request, num_steps: int, kept: bool = False) -> list[int]:
    """The steps (of ``num_steps`` engine steps in which ``request`` decodes alone) at which the policy asked
    for a probe, each probe then checked with its one draft kept or not."""
    return [step for step, probed in enumerate(batch_probes(policy, [request], num_steps, kept)) if probed]


def batch_probes(policy: SpeculationPolicy, batch: list[Request], num_steps: int, kept: bool = False) -> list[str]:
    """``num_steps`` engine steps of ``batch`` decoding: per step, the id of the request probed ('' if none)."""
    probed = []
    for _ in range(num_steps):
        policy.begin_step()
        probed.append("")
        for request in batch:
            request.append_token(5)
            if policy.num_spec_tokens(request, batch_size=len(batch)) == 1:
                probed[-1] = request.request_id
                check(policy, request, bucket=0, num_drafts=1, num_accepted=int(kept))
    return probed


def long_request(request_id: str = "r", seed: int | None = None) -> Request:
    params = SamplingParams(max_tokens=2000) if seed is None else SamplingParams(max_tokens=2000, temperature=0.8, seed=seed)
    request = Request(request_id, [1, 2, 3], params, max_model_len=4096)
    request.append_token(5)
    return request


def failing(policy: SpeculationPolicy, request: Request) -> Request:
    for _ in range(12):
        check(policy, request, bucket=0, num_drafts=3, num_accepted=0)
    return request


def costly_policy() -> SpeculationPolicy:
    return SpeculationPolicy(6, fixed_cost_rows=2.0, probe_interval=16, proposer_cost=0.3)


def test_failed_probes_of_a_costly_proposer_space_out_and_a_kept_one_resets_them():
    policy = costly_policy()
    request = failing(policy, long_request())
    gaps = [b - a for a, b in itertools.pairwise(probes_in(policy, request, 16 * (1 + 2 + 4 + 8 + 8 + 8)))]
    assert gaps == [32, 64, 128, 128, 128]  # doubling after each failure, up to MAX_PROBE_BACKOFF * 16
    assert 16 * MAX_PROBE_BACKOFF == 128
    kept = probes_in(policy, request, 128 + 48, kept=True)
    assert [b - a for a, b in itertools.pairwise(kept)] == [16, 16, 16]  # the first was kept: back to 16


def test_short_requests_share_the_engines_probes():
    """Requests shorter than the spacing still probe now and then: the engine's steps pace the probes."""
    policy = costly_policy()
    asked = [len(probes_in(policy, failing(policy, long_request(f"short{i}")), 20)) for i in range(40)]
    assert 3 <= sum(asked) <= 10  # 800 steps: 16 + 32 + 64 + 128 + 128 ... apart, not one per request


def test_a_batch_probes_as_often_as_one_request_and_takes_turns():
    policy = costly_policy()
    batch = [failing(policy, long_request(f"r{i}")) for i in range(8)]
    probed = [request_id for request_id in batch_probes(policy, batch, 16 * (1 + 2 + 4 + 8 * 8)) if request_id]
    assert len(probed) == 1 + 1 + 1 + 8  # every 16, 32, 64, then 128 steps: as for one request alone
    assert sorted(probed[3:]) == [f"r{i}" for i in range(8)]  # each request in turn, not always the same one
    late = failing(policy, long_request("late"))  # joins a batch whose other requests probed long ago
    assert "late" not in [r for r in batch_probes(policy, [*batch, late], 128 * 2) if r][:1]


def test_a_lone_candidate_in_a_big_batch_still_probes_every_16_steps():
    """Engine steps pace the probes, however few of a step's running requests are candidates (the others
    prefilling or speculating)."""
    policy = costly_policy()
    idle = failing(policy, long_request("idle"))
    probed = []
    for step in range(64):
        policy.begin_step()
        idle.append_token(5)
        if policy.num_spec_tokens(idle, batch_size=8) == 1:  # 8 running, only this one a candidate
            probed.append(step)
            check(policy, idle, bucket=0, num_drafts=1, num_accepted=1)
    assert [b - a for a, b in itertools.pairwise(probed)] == [16, 16, 16]


def test_cheap_proposer_probes_on_schedule_and_seeded_requests_keep_their_own_spacing():
    ngram = SpeculationPolicy(6, fixed_cost_rows=2.0, probe_interval=16)
    request = failing(ngram, long_request())
    assert [b - a for a, b in itertools.pairwise(probes_in(ngram, request, 16 * 6))] == [16] * 5
    costly = costly_policy()
    seeded = failing(costly, long_request("seeded", seed=7))
    other = failing(costly, long_request("other"))
    probes_in(costly, other, 300)  # another request's failed probes space out the engine's ...
    assert costly.probe_interval_of(other) == 16 * MAX_PROBE_BACKOFF
    assert costly.probe_interval_of(seeded) == 16  # ... not the seeded request's
    assert len(probes_in(costly, seeded, 16)) == 1


def test_a_seeded_random_requests_draft_count_ignores_the_batch():
    policy = costly_policy()
    seeded, unseeded = long_request("seeded", seed=7), long_request("unseeded")
    for request in (seeded, unseeded):
        for accepted in (0, 6, 3) * 4:
            check(policy, request, bucket=0, num_drafts=6, num_accepted=accepted)
    assert policy.num_spec_tokens(unseeded, batch_size=1) > policy.num_spec_tokens(unseeded, batch_size=64)
    assert policy.num_spec_tokens(seeded, batch_size=1) == policy.num_spec_tokens(seeded, batch_size=64) > 0
    assert policy.trim(seeded, 6, bucket=0, batch_size=1) == policy.trim(seeded, 6, bucket=0, batch_size=64)


def test_a_lookup_in_front_of_a_draft_model_judges_each_source_apart():
    """Method ngram_draft: a failing draft model stops drafting (but for its spaced probes) while the lookup's
    free drafts go on at full length, and the lookup's failed probes never space out the draft model's."""
    policy = costly_policy()
    request = failing(policy, long_request())  # bucket 0: the draft model's drafts, all rejected
    for _ in range(12):
        check(policy, request, bucket=3, num_drafts=6, num_accepted=6)  # a 3-token match: always right
    policy.begin_step()
    assert policy.num_spec_tokens(request, source="lookup") == 6
    assert policy.num_spec_tokens(request, source="draft_model") == 0  # or a probe, below
    policy = costly_policy()
    other = failing(policy, long_request("other"))
    for _ in range(12):
        check(policy, other, bucket=2, num_drafts=3, num_accepted=0)  # its lookups fail too
    lookup_probes, model_probes = [], []
    for step in range(16 * 8):
        policy.begin_step()
        other.append_token(5)
        if policy.num_spec_tokens(other, source="lookup") == 1:  # free: on schedule, never spaced out
            lookup_probes.append(step)
            check(policy, other, bucket=2, num_drafts=1, num_accepted=0)
        if policy.num_spec_tokens(other, source="draft_model") == 1:
            model_probes.append(step)
            check(policy, other, bucket=0, num_drafts=1, num_accepted=0)
    assert [b - a for a, b in itertools.pairwise(lookup_probes)] == [16] * 7
    assert [b - a for a, b in itertools.pairwise(model_probes)] == [32, 64]


def test_a_seeded_request_judges_the_lookup_apart_from_its_failing_draft_model():
    """A seeded random request shrinks each bucket toward its own checks of the same source only."""
    policy = costly_policy()
    seeded = long_request("seeded", seed=7)
    for _ in range(10):
        check(policy, seeded, bucket=0, num_drafts=3, num_accepted=0)  # the draft model keeps failing
    assert policy.num_spec_tokens(seeded, source="draft_model") <= 1  # nothing, or a probe
    fresh = best_num_drafts([PRIOR_ACCEPTANCE] * 6, 6, 1 / 3)  # batch 1: a draft costs 1 / (2 + 1)
    assert policy.num_spec_tokens(seeded, source="lookup") == fresh > 0  # its lookups are still judged fresh
