"""Scheduler: token budget, chunked prefill, decode-first, preemption and priorities, with a fake runner."""

from corral.config import SchedulerConfig
from corral.engine.batch import ModelRunnerOutput, SampledToken
from corral.engine.block_manager import KVCacheManager
from corral.engine.request import Request, RequestStatus
from corral.engine.scheduler import Scheduler
from corral.sample.params import SamplingParams


def make_scheduler(num_blocks=64, block_size=4, budget=16, max_seqs=8, prefix=True) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=256)
    return Scheduler(config, KVCacheManager(num_blocks, block_size, prefix))


def make_request(request_id, num_prompt, max_tokens=4, priority=0, arrival=0.0) -> Request:
    # Distinct prompts per request, so the prefix cache does not share blocks between them.
    first = 1000 * (1 + sum(map(ord, request_id)))
    return Request(
        request_id, list(range(first, first + num_prompt)), SamplingParams(max_tokens=max_tokens),
        max_model_len=256, priority=priority, arrival_time=arrival,
    )


def fake_step(scheduler: Scheduler):
    out = scheduler.schedule()
    sampled = {s.request.request_id: [SampledToken(7)] for s in out.scheduled if s.samples}
    return out, scheduler.update_from_output(out, ModelRunnerOutput(sampled))


def test_long_prompt_is_chunked_and_decodes_run_alongside():
    scheduler = make_scheduler(budget=16)
    scheduler.add_request(make_request("short", 3, max_tokens=10, arrival=0))
    scheduler.add_request(make_request("long", 40, arrival=1))
    out, _ = fake_step(scheduler)
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("short", 3), ("long", 13)]
    for expected_long_chunk in (15, 12):
        out, _ = fake_step(scheduler)
        # The running decode is scheduled first every step; the prompt takes the rest of the budget.
        assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [
            ("short", 1), ("long", expected_long_chunk)]
    assert scheduler.requests["long"].num_output_tokens == 1


def test_max_num_seqs_limits_admission():
    scheduler = make_scheduler(budget=100, max_seqs=2)
    for i in range(3):
        scheduler.add_request(make_request(f"r{i}", 2, arrival=i))
    out, _ = fake_step(scheduler)
    assert [s.request.request_id for s in out.scheduled] == ["r0", "r1"]


def test_preempts_most_recent_when_blocks_run_out_and_recomputes():
    scheduler = make_scheduler(num_blocks=4, block_size=4, budget=64)
    scheduler.add_request(make_request("a", 7, max_tokens=8, arrival=0))
    scheduler.add_request(make_request("b", 7, max_tokens=8, arrival=1))
    fake_step(scheduler)  # prompts: a and b take 2 blocks each; all 4 used
    out, _ = fake_step(scheduler)  # position 7 still fits in block 2
    assert out.preempted_request_ids == []
    out, _ = fake_step(scheduler)  # a needs a third block for position 8: b is preempted
    assert out.preempted_request_ids == ["b"]
    b = scheduler.requests["b"]
    assert b.status is RequestStatus.WAITING and b.num_computed_tokens == 0
    finished = []
    for _ in range(50):
        _, outputs = fake_step(scheduler)
        finished += [o.request_id for o in outputs if o.finished]
        if not scheduler.num_unfinished:
            break
    assert finished == ["a", "b"]
    assert scheduler.kv_manager.num_free_blocks == 4


def test_priority_orders_admission():
    scheduler = make_scheduler(budget=100, max_seqs=1)
    scheduler.add_request(make_request("low", 2, priority=5, arrival=0))
    scheduler.add_request(make_request("high", 2, priority=-1, arrival=1))
    out, _ = fake_step(scheduler)
    assert [s.request.request_id for s in out.scheduled] == ["high"]


def test_priority_preempts_the_lower_priority_request_even_when_older():
    """When a higher-priority request needs a block and the pool is empty, the lower-priority one is preempted,
    though it arrived first (without priorities the most recent, the high one, would be), and recomputed later."""
    scheduler = make_scheduler(num_blocks=4, block_size=4, budget=64)
    low = make_request("low", 6, max_tokens=8, priority=5, arrival=0)
    high = make_request("high", 8, max_tokens=8, priority=-1, arrival=1)
    num_tokens = {"low": 0, "high": 0}  # tokens emitted

    def step():
        out, outputs = fake_step(scheduler)
        for output in outputs:
            num_tokens[output.request_id] += len(output.new_token_ids)
        return out, outputs

    scheduler.add_request(low)
    step()  # low: 6 prompt tokens in blocks 0, 1
    scheduler.add_request(high)
    out, _ = step()  # low decodes in block 1; high's 8 prompt tokens take blocks 2, 3: pool full
    assert [s.request.request_id for s in out.scheduled] == ["low", "high"] and out.preempted_request_ids == []
    assert scheduler.kv_manager.num_free_blocks == 0
    out, _ = step()  # high needs a third block for position 8; low still fits in its own
    assert out.preempted_request_ids == ["low"]
    assert [s.request.request_id for s in out.scheduled] == ["high"]
    assert (low.status, low.num_computed_tokens, low.num_preemptions) == (RequestStatus.WAITING, 0, 1)
    assert (high.status, high.num_preemptions) == (RequestStatus.RUNNING, 0)

    finished = []
    for _ in range(50):
        _, outputs = step()
        finished += [o.request_id for o in outputs if o.finished]
        if not scheduler.num_unfinished:
            break
    assert finished == ["high", "low"] and num_tokens == {"low": 8, "high": 8}
    assert scheduler.num_preemptions == 1 and high.num_preemptions == 0
    assert scheduler.kv_manager.num_free_blocks == 4


def test_abort_frees_blocks_and_reports_finished_id():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 9))
    scheduler.add_request(make_request("b", 9))
    fake_step(scheduler)
    scheduler.abort_request("a")
    scheduler.abort_request("b")
    scheduler.abort_request("unknown")
    assert scheduler.num_unfinished == 0
    assert scheduler.kv_manager.num_free_blocks == 64
    assert sorted(scheduler.schedule().finished_request_ids) == ["a", "b"]


def test_stops_at_max_tokens_with_length_reason():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 3, max_tokens=2))
    reasons = []
    for _ in range(4):
        _, outputs = fake_step(scheduler)
        reasons += [o.finish_reason for o in outputs]
    assert reasons == [None, "length"]


def spec_step(scheduler: Scheduler, accepted: dict[str, int]):
    """A step where each request with drafts gets its first ``accepted[id]`` drafts accepted, then token 7."""
    out = scheduler.schedule()
    sampled = {}
    for s in out.scheduled:
        if s.samples:
            kept = s.spec_token_ids[: accepted.get(s.request.request_id, 0)]
            sampled[s.request.request_id] = [SampledToken(t) for t in [*kept, 7]]
    return out, scheduler.update_from_output(out, ModelRunnerOutput(sampled))


def test_drafts_are_scheduled_after_the_last_token_and_rejected_ones_rolled_back():
    scheduler = make_scheduler(num_blocks=8, block_size=4, budget=64)
    scheduler.add_request(make_request("a", 6, max_tokens=20))
    fake_step(scheduler)  # prompt: 6 tokens computed, token 7 sampled
    request = scheduler.requests["a"]
    assert scheduler.decoding_requests() == [request]
    assert scheduler.kv_manager.block_tables["a"] == [0, 1]

    request.spec_token_ids = [11, 12, 13, 14, 15]  # positions 7..11: a third block
    out, outputs = spec_step(scheduler, {"a": 2})
    (scheduled,) = out.scheduled
    assert (scheduled.num_computed_tokens, scheduled.num_new_tokens, scheduled.spec_token_ids) == (6, 6, [11, 12, 13, 14, 15])
    assert outputs[0].new_token_ids == [11, 12, 7]
    # K/V of the last token and the two accepted drafts stays (9 tokens), the rest is stale
    assert (request.num_computed_tokens, request.num_tokens) == (9, 10)
    assert scheduler.kv_manager.block_tables["a"] == [0, 1, 2]
    assert request.spec_token_ids == []
    stats = scheduler.spec_decode_stats
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens, stats.num_emitted_tokens) == (1, 5, 2, 3)
    assert (outputs[0].num_draft_tokens, outputs[0].num_accepted_tokens) == (5, 2)


def test_blocks_holding_only_rejected_drafts_are_freed():
    scheduler = make_scheduler(num_blocks=8, block_size=4, budget=64)
    scheduler.add_request(make_request("a", 4, max_tokens=20))
    fake_step(scheduler)  # 4 computed (block 0 full), 5 known
    request = scheduler.requests["a"]
    request.spec_token_ids = [1, 2, 3, 4, 5, 6, 7, 8]  # positions 4..12: blocks 1, 2 and 3
    out, _ = spec_step(scheduler, {"a": 0})
    assert out.scheduled[0].block_ids is scheduler.kv_manager.block_tables["a"]
    assert scheduler.kv_manager.block_tables["a"] == [0, 1]  # 5 computed tokens need two blocks
    assert scheduler.kv_manager.num_free_blocks == 6
    assert request.num_computed_tokens == 5


def test_drafts_fit_the_budget_and_are_dropped_before_preempting():
    scheduler = make_scheduler(num_blocks=3, block_size=4, budget=4)
    scheduler.add_request(make_request("a", 3, max_tokens=20))
    fake_step(scheduler)
    request = scheduler.requests["a"]
    request.spec_token_ids = [1, 2, 3, 4, 5, 6]
    out, _ = spec_step(scheduler, {"a": 3})
    assert out.scheduled[0].spec_token_ids == [1, 2, 3]  # 1 + 3 tokens: the whole budget

    big = make_scheduler(num_blocks=2, block_size=4, budget=64)
    big.add_request(make_request("b", 3, max_tokens=20))
    fake_step(big)
    big.requests["b"].spec_token_ids = [1, 2, 3, 4, 5, 6]  # needs a third block: none left
    out, _ = spec_step(big, {})
    assert out.preempted_request_ids == [] and out.scheduled[0].spec_token_ids == []
    assert out.scheduled[0].num_new_tokens == 1


def test_accepted_tokens_after_a_finishing_one_are_dropped():
    scheduler = make_scheduler(budget=64)
    scheduler.add_request(make_request("a", 3, max_tokens=3))
    fake_step(scheduler)  # one output token
    scheduler.requests["a"].spec_token_ids = [21, 22, 23]
    _, outputs = spec_step(scheduler, {"a": 3})
    assert outputs[0].new_token_ids == [21, 22]  # max_tokens 3 reached
    assert outputs[0].finish_reason == "length"
    assert scheduler.kv_manager.num_free_blocks == scheduler.kv_manager.num_blocks


def test_preemption_discards_drafts():
    scheduler = make_scheduler(num_blocks=4, block_size=4, budget=64)
    scheduler.add_request(make_request("a", 7, max_tokens=8, arrival=0))
    scheduler.add_request(make_request("b", 7, max_tokens=8, arrival=1))
    fake_step(scheduler)
    scheduler.requests["b"].spec_token_ids = [5]
    fake_step(scheduler)  # b's draft fits in its second block
    scheduler.requests["b"].spec_token_ids = [5, 6]
    out, _ = fake_step(scheduler)  # a needs a third block: b is preempted, drafts and all
    assert out.preempted_request_ids == ["b"]
    assert scheduler.requests["b"].spec_token_ids == []
