"""Scheduler edge cases: drafts and the exact token budget, admission without chunked prefill, prefix-cache
counts across preemption, aborts, every field of a step's output, and counters over several rounds."""

from corral.config import SchedulerConfig
from corral.engine.batch import EngineCoreOutput, ModelRunnerOutput, SampledToken, SchedulerOutput
from corral.engine.block_manager import KVCacheManager
from corral.engine.request import Request, RequestStatus
from corral.engine.scheduler import Scheduler
from corral.sample.params import SamplingParams

SHARED = list(range(500, 512))  # a prompt prefix of three 4-token blocks, for prefix-cache hits


def make_scheduler(num_blocks=64, block_size=4, budget=16, chunked=True, max_model_len=256) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=8,
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
    )
    return Scheduler(config, KVCacheManager(num_blocks, block_size))


def make_request(request_id, prompt, max_tokens=20, priority=0, arrival=0.0, max_model_len=256, **params):
    """``prompt``: the token ids, or a length for a prompt no other request shares."""
    if isinstance(prompt, int):
        first = 1000 * (1 + sum(map(ord, request_id)))
        prompt = list(range(first, first + prompt))
    return Request(
        request_id,
        prompt,
        SamplingParams(max_tokens=max_tokens, **params),
        max_model_len=max_model_len,
        priority=priority,
        arrival_time=arrival,
    )


def entries(out: SchedulerOutput) -> list[tuple[str, int, int, list[int]]]:
    return [
        (s.request.request_id, s.num_computed_tokens, s.num_new_tokens, s.spec_token_ids)
        for s in out.scheduled
    ]


def run_runner(
    out: SchedulerOutput, accepted: dict[str, int] | None = None, token: int = 7
) -> ModelRunnerOutput:
    """A fake runner: each request that samples keeps its first ``accepted[id]`` drafts, then emits ``token``."""
    sampled = {}
    for s in out.scheduled:
        if s.samples:
            kept = s.spec_token_ids[: (accepted or {}).get(s.request.request_id, 0)]
            sampled[s.request.request_id] = [SampledToken(t) for t in [*kept, token]]
    return ModelRunnerOutput(sampled)


def step(scheduler: Scheduler, accepted: dict[str, int] | None = None, token: int = 7):
    out = scheduler.schedule()
    return out, scheduler.update_from_output(out, run_runner(out, accepted, token))


def decoding(scheduler: Scheduler, ids: list[str]) -> list[Request]:
    """Add one-token prompts and compute them: each request then has 2 tokens, 1 computed."""
    for arrival, request_id in enumerate(ids):
        scheduler.add_request(make_request(request_id, 1, arrival=arrival))
    step(scheduler)
    return [scheduler.requests[request_id] for request_id in ids]


def test_drafts_count_against_the_budget_and_a_spent_budget_schedules_nothing_more():
    scheduler = make_scheduler(budget=4)
    a, b, _ = decoding(scheduler, ["a", "b", "c"])
    scheduler.add_request(make_request("d", 2, arrival=3))
    a.spec_token_ids = [11, 12]
    b.spec_token_ids = [21, 22]
    out = scheduler.schedule()
    # a: its last token and 2 drafts (3 of 4); b: 1 left == its gap, so no draft; c and d: nothing left.
    assert entries(out) == [("a", 1, 3, [11, 12]), ("b", 1, 1, [])]
    assert out.num_scheduled_tokens == 4
    assert [r.request_id for r in scheduler.waiting] == ["d"]
    assert scheduler.requests["d"].status is RequestStatus.WAITING


def test_one_token_of_budget_left_admits_a_prompt_chunk():
    scheduler = make_scheduler(budget=4)
    a, _ = decoding(scheduler, ["a", "b"])
    scheduler.add_request(make_request("d", 6, arrival=2))
    a.spec_token_ids = [11]
    out = scheduler.schedule()
    assert entries(out) == [("a", 1, 2, [11]), ("b", 1, 1, []), ("d", 0, 1, [])]


def test_drafts_are_dropped_when_the_pool_is_short_and_the_decode_still_gets_its_block():
    scheduler = make_scheduler(num_blocks=2, block_size=4, budget=64)
    scheduler.add_request(make_request("a", 4))
    step(scheduler)  # block 0 full; the next token, at position 4, needs block 1
    a = scheduler.requests["a"]
    a.spec_token_ids = [1, 2, 3, 4]  # positions 5..8 would need a third block
    out = scheduler.schedule()
    assert entries(out) == [("a", 4, 1, [])] and out.preempted_request_ids == []
    assert len(scheduler.kv_manager.block_tables["a"]) == 2 and scheduler.kv_manager.num_free_blocks == 0
    scheduler.update_from_output(out, run_runner(out))
    assert (a.num_computed_tokens, a.num_tokens) == (5, 6)


def test_without_chunked_prefill_a_prompt_the_size_of_the_remaining_budget_is_admitted():
    scheduler = make_scheduler(budget=16, chunked=False, max_model_len=16)
    scheduler.add_request(make_request("a", 4, max_model_len=16))
    step(scheduler)
    scheduler.add_request(make_request("b", 15, max_model_len=16, arrival=1))
    out = scheduler.schedule()  # a's decode takes 1 of 16: exactly b's 15 prompt tokens are left
    assert entries(out) == [("a", 4, 1, []), ("b", 0, 15, [])]


def test_without_chunked_prefill_a_prefix_hit_admits_a_prompt_whose_remainder_fits():
    scheduler = make_scheduler(budget=16, chunked=False, max_model_len=16)
    scheduler.add_request(make_request("a", SHARED, max_model_len=16))
    step(scheduler)  # a's 3 full blocks enter the prefix cache
    b = make_request("b", SHARED[:8] + [1, 2, 3, 4], max_model_len=16, arrival=1)
    scheduler.add_request(b)
    out = scheduler.schedule()  # 15 tokens of budget left: b's 12 would not fit, its 4 uncached ones do
    assert entries(out) == [("a", 12, 1, []), ("b", 8, 4, [])]
    assert (b.num_cached_tokens, b.num_computed_tokens, b.status) == (8, 8, RequestStatus.RUNNING)
    scheduler.update_from_output(out, run_runner(out))
    assert (b.num_computed_tokens, b.num_tokens) == (12, 13)


def test_preempted_twice_keeps_its_first_cached_count_and_counts_both_preemptions():
    scheduler = make_scheduler(num_blocks=4, block_size=4, budget=64)
    scheduler.add_request(make_request("a", 4, max_tokens=3, arrival=0))
    b = make_request("b", 8, priority=1, arrival=1)
    scheduler.add_request(b)
    step(scheduler)  # a: block 0; b: its 2 full prompt blocks; 1 block free
    assert b.num_cached_tokens == 0
    out, _ = step(scheduler)  # a takes the free block for position 4; b needs a third for position 8
    assert out.preempted_request_ids == ["b"]
    out, outputs = step(scheduler)  # b's prompt blocks are cached, but with a third block b needs 3 of 2 free
    assert entries(out) == [("a", 5, 1, [])] and outputs[0].finish_reason == "length"
    out = scheduler.schedule()  # a gone: b is back, its 8 prompt tokens from the cache
    assert entries(out) == [("b", 8, 1, [])]
    assert (b.status, b.num_computed_tokens, b.num_cached_tokens) == (RequestStatus.RUNNING, 8, 0)
    scheduler.update_from_output(out, run_runner(out))
    scheduler.add_request(make_request("c", 3, priority=0, arrival=2))
    out, _ = step(scheduler)  # c takes the last free block
    assert entries(out) == [("b", 9, 1, []), ("c", 0, 3, [])] and scheduler.kv_manager.num_free_blocks == 0
    step(scheduler)  # both still fit: c at position 3, b at 10
    out, _ = step(scheduler)  # c needs a block for position 4: b, the lower priority, goes again
    assert out.preempted_request_ids == ["b"] and entries(out) == [("c", 4, 1, [])]
    assert (b.num_preemptions, scheduler.num_preemptions, b.num_cached_tokens) == (2, 2, 0)


def test_abort_of_a_waiting_request_before_the_first_schedule():
    scheduler = make_scheduler()
    a = make_request("a", 3, arrival=0)
    scheduler.add_request(a)
    scheduler.add_request(make_request("b", 3, arrival=1))
    assert scheduler.abort_request("a") is a
    assert a.status is RequestStatus.FINISHED_ABORTED and a.status.finish_reason == "abort"
    assert [r.request_id for r in scheduler.waiting] == ["b"] and "a" not in scheduler.requests
    assert scheduler.num_unfinished == 1 and scheduler.finished_request_ids == ["a"]
    out = scheduler.schedule()
    assert out.finished_request_ids == ["a"] and entries(out) == [("b", 0, 3, [])]
    assert scheduler.finished_request_ids == []


def test_a_request_aborted_during_the_step_does_not_hold_back_the_next_ones_output():
    scheduler = make_scheduler()
    a, b = decoding(scheduler, ["a", "b"])
    out = scheduler.schedule()
    runner_output = run_runner(out, token=9)
    scheduler.abort_request("a")  # while the step ran: the runner still sampled for it
    outputs = scheduler.update_from_output(out, runner_output)
    assert [(o.request_id, o.new_token_ids) for o in outputs] == [("b", [9])]
    assert b.output_token_ids == [7, 9] and b.num_computed_tokens == 2
    assert a.output_token_ids == [7]


def test_a_partial_prefill_chunk_listed_first_does_not_hold_back_the_next_ones_output():
    # The scheduler lists a partial chunk last (it spends the budget); update_from_output does not rely on it.
    scheduler = make_scheduler(budget=8)
    scheduler.add_request(make_request("s", 2, arrival=0))
    scheduler.add_request(make_request("long", 20, arrival=1))
    out = scheduler.schedule()
    assert entries(out) == [("s", 0, 2, []), ("long", 0, 6, [])]
    runner_output = run_runner(out)
    out.scheduled.reverse()
    outputs = scheduler.update_from_output(out, runner_output)
    assert [(o.request_id, o.new_token_ids) for o in outputs] == [("s", [7])]
    assert (scheduler.requests["s"].num_computed_tokens, scheduler.requests["long"].num_computed_tokens) == (
        2,
        6,
    )


def test_output_carries_every_field():
    scheduler = make_scheduler(budget=64)
    scheduler.add_request(make_request("w", SHARED[:8]))
    step(scheduler, token=5)  # w's 2 prompt blocks enter the prefix cache
    r = make_request("r", [*SHARED[:8], 42], arrival=1, logprobs=1, stop_token_ids=[7])
    scheduler.add_request(r)
    out = scheduler.schedule()
    assert entries(out) == [("w", 8, 1, []), ("r", 8, 1, [])]
    with_logprobs = SampledToken(7, logprob_token_ids=[7, 3], logprobs=[-0.25, -1.5], rank=1)
    outputs = scheduler.update_from_output(
        out, ModelRunnerOutput({"w": [SampledToken(9)], "r": [with_logprobs]})
    )
    assert outputs == [
        EngineCoreOutput(
            "w",
            new_token_ids=[9],
            new_logprobs=[],
            finish_reason=None,
            stop_reason=None,
            num_cached_tokens=0,
            num_draft_tokens=0,
            num_accepted_tokens=0,
        ),
        EngineCoreOutput(
            "r",
            new_token_ids=[7],
            new_logprobs=[with_logprobs],
            finish_reason="stop",
            stop_reason=7,
            num_cached_tokens=8,
            num_draft_tokens=0,
            num_accepted_tokens=0,
        ),
    ]
    assert scheduler.requests["w"].output_token_ids == [5, 9]
    assert scheduler.requests["w"].all_token_ids == [*SHARED[:8], 5, 9]
    assert r.output_token_ids == [7] and r.all_token_ids == [*SHARED[:8], 42, 7]


def test_spec_counters_accumulate_over_two_rounds():
    scheduler = make_scheduler(budget=64)
    scheduler.add_request(make_request("a", 3))
    step(scheduler)
    a = scheduler.requests["a"]
    a.spec_token_ids = [11, 12, 13]
    step(scheduler, {"a": 2})  # 3 drafts, 2 accepted, 3 tokens emitted
    a.spec_token_ids = [14, 15]
    _, outputs = step(scheduler, {"a": 0})  # 2 drafts, none accepted, 1 token emitted
    assert a.output_token_ids == [7, 11, 12, 7, 7]
    assert (a.num_draft_tokens, a.num_accepted_tokens) == (5, 2)
    assert (outputs[0].num_draft_tokens, outputs[0].num_accepted_tokens) == (5, 2)
    stats = scheduler.spec_decode_stats
    totals = (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens, stats.num_emitted_tokens)
    assert totals == (2, 3 + 2, 2 + 0, (2 + 1) + (0 + 1))
