"""EngineCore: the step loop of scheduler -> model runner -> scheduler, over token ids only."""

from __future__ import annotations

from corral.engine.batch import EngineCoreOutput
from corral.engine.block_manager import KVCacheManager
from corral.engine.model_runner import ModelRunner
from corral.engine.request import Request
from corral.engine.scheduler import Scheduler
from corral.engine.spec_policy import SpeculationPolicy


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, spec_policy: SpeculationPolicy | None = None):
        self.scheduler = scheduler
        self.runner = runner
        self.spec_policy = spec_policy or SpeculationPolicy(runner.num_speculative_tokens)

    @property
    def kv_manager(self) -> KVCacheManager:
        return self.scheduler.kv_manager

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_request(self, request_id: str) -> None:
        self.scheduler.abort_request(request_id)
        self.runner.remove_requests([request_id])

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def step(self) -> list[EngineCoreOutput]:
        scheduler_output = self.scheduler.schedule()
        runner_output = self.runner.execute(scheduler_output)
        outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        if self.runner.proposer is not None:
            for scheduled in scheduler_output.scheduled:
                sampled = runner_output.sampled.get(scheduled.request.request_id)
                if scheduled.spec_token_ids and sampled is not None:
                    self.spec_policy.record(scheduled.request, len(scheduled.spec_token_ids), len(sampled) - 1)
            finished = self.scheduler.finished_request_ids
            self.runner.remove_requests(finished)
            self.spec_policy.remove_requests(finished)
            self._propose()
        return outputs

    def _propose(self) -> None:
        """Draft tokens for the next step's decodes; the scheduler schedules them after each last token."""
        requests = self.scheduler.decoding_requests()
        batch_size = len(self.scheduler.running)
        self.spec_policy.begin_step()
        self.runner.clear_drafts()
        fallback = self.runner.fallback_proposer is not None
        source = "lookup" if fallback else "only"
        limits = [self.spec_policy.num_spec_tokens(r, batch_size, source) for r in requests]
        wanted = [(r, n) for r, n in zip(requests, limits, strict=True) if n > 0]
        drafted = self._draft(wanted, batch_size)
        if fallback:  # a draft model for the requests the lookup gave nothing worth checking (or was not asked)
            missed = [r for r in requests if r.request_id not in drafted]
            limits = [self.spec_policy.num_spec_tokens(r, batch_size, "draft_model") for r in missed]
            self._draft([(r, n) for r, n in zip(missed, limits, strict=True) if n > 0], batch_size, fallback=True)

    def _draft(self, wanted: list[tuple[Request, int]], batch_size: int, fallback: bool = False) -> set[str]:
        """Propose for each (request, limit) and keep what the policy trims to; the ids that kept a draft."""
        if not wanted:
            return set()
        drafts = self.runner.propose([r for r, _ in wanted], [n for _, n in wanted], fallback)
        drafted = set()
        for (request, _), draft in zip(wanted, drafts, strict=True):
            keep = self.spec_policy.trim(request, len(draft.token_ids), draft.bucket, batch_size)
            request.spec_token_ids = draft.token_ids[:keep]
            if request.spec_token_ids:
                drafted.add(request.request_id)
        return drafted
