"""AsyncEngine: the engine's step loop on one dedicated thread, fed and drained from asyncio.

The engine is not thread-safe, so every call into it happens on the loop thread: the asyncio side
sends commands through a queue (the thread blocks on it while idle) and receives each request's
outputs on its own asyncio.Queue, filled with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from corral.engine.llm_engine import LLMEngine, PromptType
from corral.outputs import RequestOutput
from corral.sample.params import SamplingParams
from corral.structured.backend import CompiledGrammar

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop has stopped (a step raised); the server reports 500 and unhealthy."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue


@dataclass
class _Add:
    request_id: str
    prompt: PromptType
    params: SamplingParams
    stream: _Stream
    accepted: asyncio.Future
    grammar: CompiledGrammar | None = None
    priority: int = 0


@dataclass
class _Abort:
    request_id: str


class EngineObserver(Protocol):
    """Called on the engine thread: after a request is accepted or aborted, and after every step."""

    def on_add(self, request_id: str) -> None: ...

    def on_abort(self, engine: LLMEngine, request_id: str) -> None: ...

    def on_step(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None: ...


class AsyncEngine:
    """Owns an LLMEngine and runs ``step()`` on one background thread; every engine call happens there.

    Healthy while that thread runs; if a step raises, in-flight and queued requests fail with
    EngineDeadError (a 500) and the engine stays unhealthy (/health answers 503).

    Given a function that builds the engine rather than the engine, the thread builds it first, so that
    loading and stepping share one OpenMP thread team: libgomp keeps a team per thread that starts parallel
    work, and with more of its threads than CPUs (two teams of 2 on 2 cores) it stops spinning idle workers,
    so every parallel region waits for a futex wake-up (1.5x the time of a block linear at 32 rows, 0.64x the
    throughput of a whole 32-stream workload, measured on 2 cores: docs/performance.md, "The served path").
    """

    def __init__(self, engine: LLMEngine | Callable[[], LLMEngine], observer: EngineObserver | None = None):
        self.engine: LLMEngine = None  # type: ignore[assignment]  # set below or on the loop thread
        self.observer = observer
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._error: BaseException | None = None
        self._stopping = False
        # Held while checking liveness and queueing an add, and while the loop thread fails what is
        # queued on its way out: so no add can slip in after that final drain and wait forever.
        self._closing = threading.Lock()
        build = engine if callable(engine) and not hasattr(engine, "step") else None  # an engine has step()
        if build is None:
            self.engine = engine
        built = threading.Event()
        build_error: list[BaseException] = []

        def run() -> None:
            if build is not None:
                try:
                    self.engine = build()
                except BaseException as exc:  # re-raised by the constructor
                    build_error.append(exc)
                    return
                finally:
                    built.set()
            self._loop()

        self._thread = threading.Thread(target=run, name="corral-engine", daemon=True)
        self._thread.start()
        if build is not None:
            built.wait()
            if build_error:
                self._thread.join()
                raise build_error[0]

    @property
    def num_waiting(self) -> int:
        """Requests queued but not yet running (read from the event loop: approximate, never torn)."""
        return self._commands.qsize() + len(self.engine.core.scheduler.waiting)

    def is_healthy(self) -> bool:
        return self._thread.is_alive() and self._error is None

    async def add_request(
        self, prompt: PromptType, params: SamplingParams, request_id: str, grammar: CompiledGrammar | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Queue a request; raises its validation error (a CorralError) if the engine refuses it. ``grammar``:
        its structured output, compiled already (the engine thread then never compiles); ``priority``: lower
        runs first."""
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        accepted = loop.create_future()
        with self._closing:
            if not self.is_healthy() or self._stopping:
                raise EngineDeadError("the engine loop is not running")
            self._commands.put(_Add(request_id, prompt, params, stream, accepted, grammar, priority))
        try:
            await accepted
        except BaseException:
            self.abort(request_id)  # harmless if it was refused; needed if we were cancelled
            raise
        return RequestStream(self, request_id, stream.outputs)

    async def generate(
        self, prompt: PromptType, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        stream = await self.add_request(prompt, params, request_id)
        async for output in stream:
            yield output

    def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))

    def shutdown(self) -> None:
        """Stop the loop thread; requests still in flight end with EngineDeadError."""
        self._stopping = True
        self._commands.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands(block=not self.engine.has_unfinished_requests())
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    for output in outputs:
                        self._deliver(output.request_id, _snapshot(output), output.finished)
                    if self.observer is not None:
                        self.observer.on_step(self.engine, outputs)
        except BaseException as exc:  # a crashed step must not leave clients hanging
            logger.exception("engine loop crashed")
            self._error = exc
            self._fail_all(EngineDeadError(f"engine loop crashed: {exc}"))
        else:
            self._fail_all(EngineDeadError("the engine is shutting down"))

    def _fail_all(self, error: EngineDeadError) -> None:
        with self._closing:
            self._stopping = True
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                if isinstance(command, _Add):
                    _post(command.stream.loop, _set_exception, command.accepted, error)
        for request_id in list(self._streams):
            self._deliver(request_id, error, True)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block)
            while True:
                self._apply(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _apply(self, command: _Add | _Abort | None) -> None:
        if isinstance(command, _Add):
            try:
                self.engine.add_request(command.request_id, command.prompt, command.params, priority=command.priority,
                                        grammar=command.grammar)
            except Exception as exc:
                _post(command.stream.loop, _set_exception, command.accepted, exc)
                return
            self._streams[command.request_id] = command.stream
            if self.observer is not None:
                self.observer.on_add(command.request_id)
            _post(command.stream.loop, _set_result, command.accepted)
        elif isinstance(command, _Abort):
            self.engine.abort_request(command.request_id)
            if self._streams.pop(command.request_id, None) is not None and self.observer is not None:
                self.observer.on_abort(self.engine, command.request_id)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException, last: bool) -> None:
        stream = self._streams.pop(request_id, None) if last else self._streams.get(request_id)
        if stream is not None:
            _post(stream.loop, stream.outputs.put_nowait, item)


class RequestStream:
    """One request's cumulative outputs, in order; leaving the iteration early aborts the request."""

    def __init__(self, engine: AsyncEngine, request_id: str, outputs: asyncio.Queue):
        self.request_id = request_id
        self._engine = engine
        self._outputs = outputs
        self.finished = False

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self.finished:
                item = await self._outputs.get()
                if isinstance(item, BaseException):
                    self.finished = True
                    raise item
                self.finished = item.finished
                yield item
        finally:
            self.abort()

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)


def _snapshot(output: RequestOutput) -> RequestOutput:
    # The output processor keeps mutating its objects; hand the event loop a frozen copy.
    completions = [
        dataclasses.replace(c, token_ids=list(c.token_ids), logprobs=None if c.logprobs is None else list(c.logprobs))
        for c in output.outputs
    ]
    return dataclasses.replace(output, outputs=completions)


def _post(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the event loop is closed (server shut down first): nobody is listening
        pass


def _set_result(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
