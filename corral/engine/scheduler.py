"""Continuous batching: each step closes the gap between computed and known tokens of as many
requests as the token budget, the sequence limit and the KV pool allow. Plain Python, no torch.

Running requests go first (so decodes never stall behind a long prompt), then waiting ones are
admitted, their prompts chunked to fit the budget. When the pool runs dry the lowest-priority,
most recently admitted request is preempted: its blocks are freed and it is recomputed later.
"""

from __future__ import annotations

import bisect

from corral.config import SchedulerConfig
from corral.engine.batch import EngineCoreOutput, ModelRunnerOutput, ScheduledRequest, SchedulerOutput
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
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv_manager.allocate_slots(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                output.preempted_request_ids.append(victim.request_id)
                if victim is request:
                    return budget
            output.scheduled.append(self._scheduled(request, request.num_computed_tokens, num_new))
            budget -= num_new
            index += 1
        return budget

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            computed_blocks = self.kv_manager.get_computed_blocks(request)
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
            sampled = runner_output.sampled.get(request.request_id)
            if sampled is None:
                continue  # a prefill chunk that does not reach the end of the prompt yet
            request.append_token(sampled.token_id)
            status = request.check_stop()
            if status is not None:
                self.running.remove(request)
                self._finish(request, status)
            outputs.append(
                EngineCoreOutput(
                    request_id=request.request_id,
                    new_token_ids=[sampled.token_id],
                    new_logprobs=[sampled] if sampled.logprobs is not None else [],
                    finish_reason=request.status.finish_reason,
                    stop_reason=request.stop_reason,
                    num_cached_tokens=request.num_cached_tokens,
                )
            )
        self.kv_manager.record_occupancy(self.running)
        return outputs

    def _scheduled(self, request: Request, num_computed: int, num_new: int) -> ScheduledRequest:
        block_ids = self.kv_manager.block_tables[request.request_id]
        return ScheduledRequest(request, num_computed, num_new, block_ids)

    def _preempt(self, request: Request) -> None:
        self.kv_manager.free(request)
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
