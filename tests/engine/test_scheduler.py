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
    sampled = {s.request.request_id: SampledToken(7) for s in out.scheduled if s.samples}
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


def test_priority_orders_admission_and_preemption():
    scheduler = make_scheduler(budget=100, max_seqs=1)
    scheduler.add_request(make_request("low", 2, priority=5, arrival=0))
    scheduler.add_request(make_request("high", 2, priority=-1, arrival=1))
    out, _ = fake_step(scheduler)
    assert [s.request.request_id for s in out.scheduled] == ["high"]


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
