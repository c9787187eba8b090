"""AsyncEngine's contract, on a scripted stand-in for LLMEngine: validation errors before any output,
early close aborts, no busy loop while idle, a crashed step fails requests (500) and /health (503), and an
engine given as a function is built on the loop thread (its build errors raised by the constructor)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from corral.errors import ConfigError, InvalidRequestError
from corral.outputs import CompletionOutput, RequestOutput
from corral.sample.params import SamplingParams
from corral.server.app import build_app
from corral.server.async_engine import AsyncEngine, EngineDeadError


class FakeEngine:
    """Emits one "x" per step per request; ``fail_at_step`` makes that step raise."""

    def __init__(self, fail_at_step: int | None = None, step_delay: float = 0.0):
        self.fail_at_step = fail_at_step
        self.step_delay = step_delay
        self.num_steps = 0
        self.num_idle_checks = 0
        self.aborted: list[str] = []
        self.requests: dict[str, list[int]] = {}  # id -> [max_tokens, num generated]
        self.core = SimpleNamespace(scheduler=SimpleNamespace(waiting=[]))
        self.tokenizer = None
        self.max_model_len = 64
        self.thread_ids: set[int] = set()

    def add_request(self, request_id: str, prompt, params: SamplingParams, priority: int = 0, grammar=None) -> None:
        self.thread_ids.add(threading.get_ident())
        if not prompt:
            raise InvalidRequestError("prompt must not be empty")
        self.requests[request_id] = [params.max_tokens or 16, 0]

    def abort_request(self, request_id: str) -> None:
        self.thread_ids.add(threading.get_ident())
        self.aborted.append(request_id)
        self.requests.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        self.num_idle_checks += not self.requests
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        self.thread_ids.add(threading.get_ident())
        self.num_steps += 1
        time.sleep(self.step_delay)
        if self.num_steps == self.fail_at_step:
            raise RuntimeError("boom")
        outputs = []
        for request_id, state in list(self.requests.items()):
            state[1] += 1
            done = state[1] >= state[0]
            completion = CompletionOutput(0, "x" * state[1], [7] * state[1], finish_reason="length" if done else None)
            outputs.append(RequestOutput(request_id, "p", [1, 2], [completion], finished=done))
            if done:
                del self.requests[request_id]
        return outputs


async def collect(engine: AsyncEngine, prompt: str, max_tokens: int, request_id: str = "r") -> list[RequestOutput]:
    return [o async for o in engine.generate(prompt, SamplingParams(max_tokens=max_tokens), request_id)]


@pytest.fixture
def make_engine():
    engines: list[AsyncEngine] = []

    def make(**kwargs) -> AsyncEngine:
        engines.append(AsyncEngine(FakeEngine(**kwargs)))
        return engines[-1]

    yield make
    for engine in engines:
        engine.shutdown()


def test_outputs_arrive_in_order_and_all_engine_calls_run_on_one_thread(make_engine):
    engine = make_engine()
    outputs = asyncio.run(collect(engine, "hi", 4))
    assert [o.outputs[0].text for o in outputs] == ["x", "xx", "xxx", "xxxx"]
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "length"
    assert engine.engine.thread_ids == {engine._thread.ident}


def test_an_engine_given_as_a_function_is_built_and_stepped_on_the_loop_thread():
    """Loading and stepping on one thread keep one OpenMP team (see AsyncEngine): the build runs there."""
    built_on = []

    def build() -> FakeEngine:
        built_on.append(threading.get_ident())
        return FakeEngine()

    engine = AsyncEngine(build)
    try:
        assert built_on == [engine._thread.ident] != [threading.get_ident()]
        assert [o.outputs[0].text for o in asyncio.run(collect(engine, "hi", 2))] == ["x", "xx"]
        assert engine.engine.thread_ids == {engine._thread.ident}
    finally:
        engine.shutdown()


def test_a_failing_build_is_raised_by_the_constructor():
    def build() -> FakeEngine:
        raise ConfigError("max_model_len 9999 exceeds the model's context 2048")

    threads_before = threading.active_count()
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        AsyncEngine(build)
    assert threading.active_count() == threads_before  # the loop thread is gone


def test_validation_error_is_raised_before_any_output(make_engine):
    engine = make_engine()
    with pytest.raises(InvalidRequestError, match="empty"):
        asyncio.run(collect(engine, "", 4))
    assert engine.is_healthy() and engine.engine.num_steps == 0


def test_idle_loop_sleeps_instead_of_spinning(make_engine):
    engine = make_engine()
    asyncio.run(collect(engine, "hi", 2))
    time.sleep(0.05)
    checks = engine.engine.num_idle_checks
    time.sleep(0.3)
    assert engine.engine.num_idle_checks == checks
    assert engine.engine.num_steps == 2


def test_closing_the_iterator_early_aborts_the_request(make_engine):
    engine = make_engine(step_delay=0.01)

    async def take_two() -> None:
        stream = engine.generate("hi", SamplingParams(max_tokens=1000), "early")
        assert (await stream.__anext__()).outputs[0].text == "x"
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(take_two())
    deadline = time.monotonic() + 5
    while engine.engine.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.engine.aborted == ["early"] and not engine.engine.requests


def test_crashed_step_fails_requests_and_marks_unhealthy(make_engine):
    engine = make_engine(fail_at_step=3)
    with pytest.raises(EngineDeadError, match="boom"):
        asyncio.run(collect(engine, "hi", 10))
    assert not engine.is_healthy()
    with pytest.raises(EngineDeadError):
        asyncio.run(asyncio.wait_for(collect(engine, "hi", 1), timeout=5))


def test_shutdown_ends_requests_in_flight(make_engine):
    engine = make_engine(step_delay=0.01)

    async def run() -> None:
        task = asyncio.create_task(collect(engine, "hi", 10**6))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(engine.shutdown)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(task, timeout=5)

    asyncio.run(run())
    assert not engine.is_healthy()


def test_http_after_a_crash_gives_500_and_health_503(make_engine):
    engine = make_engine(fail_at_step=3)
    body = {"model": "fake", "prompt": [5, 6], "max_tokens": 10}  # token ids: the fake engine has no tokenizer
    with TestClient(build_app(engine, "fake")) as http:
        assert http.get("/health").status_code == 200
        events = [line for line in http.post("/v1/completions", json={**body, "stream": True}).iter_lines() if line]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == 500
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 500 and set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert "not running" in response.json()["error"]["message"]
        health = http.get("/health")
        assert health.status_code == 503 and "error" in health.json()
