"""EngineCore: the step loop of scheduler -> model runner -> scheduler, over token ids only."""

from __future__ import annotations

from corral.engine.batch import EngineCoreOutput
from corral.engine.block_manager import KVCacheManager
from corral.engine.model_runner import ModelRunner
from corral.engine.request import Request
from corral.engine.scheduler import Scheduler


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner):
        self.scheduler = scheduler
        self.runner = runner

    @property
    def kv_manager(self) -> KVCacheManager:
        return self.scheduler.kv_manager

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_request(self, request_id: str) -> None:
        self.scheduler.abort_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def step(self) -> list[EngineCoreOutput]:
        scheduler_output = self.scheduler.schedule()
        runner_output = self.runner.execute(scheduler_output)
        return self.scheduler.update_from_output(scheduler_output, runner_output)
