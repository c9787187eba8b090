"""Continuous batching: each step closes the gap between computed and known tokens of as many
requests as the token budget, the sequence limit and the KV pool allow. Plain Python, no torch.

Running requests go first (so decodes never stall behind a long prompt), then waiting ones are
admitted, their prompts chunked to fit the budget. When the pool runs dry the lowest-priority,
most recently admitted request is preempted: its blocks are freed and it is recomputed later.

With speculative decoding a decoding request also carries draft tokens: they are scheduled after its last
token (dropped first when the budget or the pool is short), and after the step the KV of rejected drafts
is rolled back: ``num_computed_tokens`` moves back and blocks past it return to the pool.
"""

from __future__ import annotations

import bisect

from corral.config import SchedulerConfig
from corral.engine.batch import (
    EngineCoreOutput,
    ModelRunnerOutput,
    SampledToken,
    ScheduledRequest,
    SchedulerOutput,
    SpecDecodeStats,
)
from corral.engine.block_manager import KVCacheManager
from corral.engine.request import Request, RequestStatus


def _order(request: Request) -> tuple[int, float]:
    return (request.priority, request.arrival_time)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager):
        self.config = config
        self.kv_manager = kv_manager
        self.waiting: list[Request] = []  # sorted by (priority, arrival_time)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self.num_preemptions = 0
        self.spec_decode_stats = SpecDecodeStats()

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, "caller checks for duplicate ids"
        self.requests[request.request_id] = request
        self._enqueue(request)

    def abort_request(self, request_id: str) -> Request | None:
        """Finish a request now (client gone, stop string matched). Unknown ids are ignored."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._finish(request, RequestStatus.FINISHED_ABORTED)
        return request

    @property
    def finished_request_ids(self) -> list[str]:
        """Requests finished since the last ``schedule()`` (the next SchedulerOutput reports them too)."""
        return list(self._finished_ids)

    def decoding_requests(self) -> list[Request]:
        """Running requests whose every known token but the last is computed: the ones a proposer drafts for."""
        return [r for r in self.running if r.num_computed_tokens == r.num_tokens - 1]

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput(finished_request_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(output, budget)
        if not output.preempted_request_ids:
            self._schedule_waiting(output, budget)
        return output

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        # Highest priority first, so the preemption victim (the last) is never already scheduled.
        self.running.sort(key=_order)
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_gap = request.num_tokens - request.num_computed_tokens
            num_new = min(num_gap, budget)
            spec = request.spec_token_ids[: max(0, budget - num_gap)]
            request.spec_token_ids = []
            while not self.kv_manager.allocate_slots(request, num_new + len(spec)):
                if spec:  # drafts are the first thing to give up
                    spec = []
                    continue
                victim = self.running.pop()
                self._preempt(victim)
                output.preempted_request_ids.append(victim.request_id)
                if victim is request:
                    return budget
            output.scheduled.append(self._scheduled(request, request.num_computed_tokens, num_new + len(spec), spec))
            budget -= num_new + len(spec)
            index += 1
        return budget

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            # prompt_logprobs need the logits of every prompt position, so cached ones are computed again
            computed_blocks = [] if request.needs_prompt_logprobs else self.kv_manager.get_computed_blocks(request)
            num_computed = len(computed_blocks) * self.kv_manager.block_size
            num_new = request.num_tokens - num_computed
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if not self.kv_manager.allocate_slots(request, num_new, computed_blocks):
                break
            self.kv_manager.record_lookup(request.num_tokens, num_computed)
            self.waiting.pop(0)
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_computed
            request.num_computed_tokens = num_computed
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            output.scheduled.append(self._scheduled(request, num_computed, num_new))
            budget -= num_new

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        outputs = []
        for scheduled in scheduler_output.scheduled:
            request = scheduled.request
            if request.is_finished:  # aborted while the step ran
                continue
            request.num_computed_tokens = scheduled.num_computed_tokens + scheduled.num_new_tokens
            request.prompt_logprob_rows.extend(runner_output.prompt_logprobs.get(request.request_id, ()))
            sampled = runner_output.sampled.get(request.request_id)
            if sampled is None:
                continue  # a prefill chunk that does not reach the end of the prompt yet
            if scheduled.spec_token_ids:
                self._roll_back_rejected(request, len(scheduled.spec_token_ids), num_accepted=len(sampled) - 1)
            emitted = self._append_tokens(request, sampled)
            outputs.append(
                EngineCoreOutput(
                    request_id=request.request_id,
                    new_token_ids=[s.token_id for s in emitted],
                    new_logprobs=[s for s in emitted if s.logprobs is not None],
                    prompt_logprobs=request.take_prompt_logprobs(),
                    finish_reason=request.status.finish_reason,
                    stop_reason=request.stop_reason,
                    num_cached_tokens=request.num_cached_tokens,
                    num_draft_tokens=request.num_draft_tokens,
                    num_accepted_tokens=request.num_accepted_tokens,
                )
            )
        self.kv_manager.record_occupancy(self.running)
        return outputs

    def _append_tokens(self, request: Request, sampled: list[SampledToken]) -> list[SampledToken]:
        """Append tokens until one finishes the request; the ones after it are dropped."""
        for count, token in enumerate(sampled, start=1):
            request.append_token(token.token_id)
            status = request.check_stop()
            if status is not None:
                self.running.remove(request)
                self._finish(request, status)
                return sampled[:count]
        return sampled

    def _roll_back_rejected(self, request: Request, num_drafts: int, num_accepted: int) -> None:
        """The rejected drafts' K/V is stale: forget it, and return blocks that now hold no computed token."""
        request.num_computed_tokens -= num_drafts - num_accepted
        self.kv_manager.truncate(request)
        request.num_draft_tokens += num_drafts
        request.num_accepted_tokens += num_accepted
        stats = self.spec_decode_stats
        stats.num_drafts += 1
        stats.num_draft_tokens += num_drafts
        stats.num_accepted_tokens += num_accepted
        stats.num_emitted_tokens += num_accepted + 1

    def _scheduled(
        self, request: Request, num_computed: int, num_new: int, spec_token_ids: list[int] | None = None
    ) -> ScheduledRequest:
        block_ids = self.kv_manager.block_tables[request.request_id]
        return ScheduledRequest(request, num_computed, num_new, block_ids, spec_token_ids or [])

    def _preempt(self, request: Request) -> None:
        self.kv_manager.free(request)
        request.spec_token_ids = []
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._enqueue(request)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv_manager.free(request)
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)

    def _enqueue(self, request: Request) -> None:
        keys = [_order(r) for r in self.waiting]
        self.waiting.insert(bisect.bisect_right(keys, _order(request)), request)
