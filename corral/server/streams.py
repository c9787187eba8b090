"""Running several engine requests for one HTTP request: add all (all-or-nothing), then merge their
outputs as they arrive, and turn cumulative outputs into deltas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from corral.outputs import CompletionOutput, RequestOutput
from corral.sample.params import SamplingParams
from corral.server.async_engine import AsyncEngine, RequestStream
from corral.structured.backend import CompiledGrammar


async def add_all(
    engine: AsyncEngine, prompts: Sequence[str | list[int]], params: SamplingParams, base_id: str,
    grammar: CompiledGrammar | None = None, priority: int = 0,
) -> list[RequestStream]:
    streams: list[RequestStream] = []
    try:
        for index, prompt in enumerate(prompts):
            streams.append(await engine.add_request(prompt, params, f"{base_id}-{index}", grammar, priority))
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    return streams


async def merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, cumulative output) as any request advances; cancelling aborts them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                await queue.put((index, output))
        except BaseException as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.abort()


ClientGone = Callable[[], Awaitable[None]]  # returns once the HTTP client has disconnected


class ClientDisconnected(Exception):
    """The HTTP client went away before its response was ready; its engine requests were aborted."""


async def final_outputs(
    streams: list[RequestStream], client_gone: Awaitable[None] | None = None
) -> list[RequestOutput]:
    """Each prompt's last output, in prompt order. If ``client_gone`` completes first, every request is
    aborted (at the engine's next step) and ClientDisconnected raised."""
    collect = asyncio.ensure_future(_last_outputs(streams))
    if client_gone is None:
        return await collect
    gone = asyncio.ensure_future(client_gone)
    try:
        done, _ = await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        collect.cancel()  # a no-op when done; else merged() aborts every request on its way out
    if collect in done:
        return collect.result()
    await asyncio.gather(collect, return_exceptions=True)
    raise ClientDisconnected


async def _last_outputs(streams: list[RequestStream]) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for index, output in merged(streams):
        finals[index] = output
    return [f for f in finals if f is not None]


@dataclass
class DeltaTracker:
    """What each choice has already been sent, to emit only what is new."""

    num_chars: int = 0
    num_tokens: int = 0
    finished: bool = False
    echoed: bool = False  # completions with echo: the prompt went out with the first chunk

    def delta(self, completion: CompletionOutput) -> tuple[str, list[int], int]:
        """(new text, new token ids, index of the first new token)."""
        text = completion.text[self.num_chars :]
        start = self.num_tokens
        tokens = completion.token_ids[start:]
        self.num_chars = len(completion.text)
        self.num_tokens = len(completion.token_ids)
        return text, tokens, start


def usage(outputs: Sequence[RequestOutput]) -> dict[str, int]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class ChunkWriter:
    """Formats one response's stream events (``data: {json}``) with its id, object type and model."""

    request_id: str
    object: str
    created: int
    model: str

    def __call__(self, choices: list, usage_: dict | None = None, extra: dict | None = None) -> str:
        body = {"id": self.request_id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, **(extra or {})}
        if usage_ is not None:
            body["usage"] = usage_
        return f"data: {json.dumps(body)}\n\n"
