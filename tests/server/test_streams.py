"""streams.py: all-or-nothing adds, merged outputs (re-raising, aborting on exit), final outputs in prompt
order, deltas of cumulative outputs, usage and the SSE chunk line. Mostly on a real AsyncEngine over a
scripted engine; one test streams from the tiny random model."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Coroutine
from types import SimpleNamespace

import pytest

from corral.errors import InvalidRequestError
from corral.outputs import CompletionOutput, RequestOutput
from corral.runtime import EngineArgs, build_engine
from corral.sample.params import SamplingParams
from corral.server.async_engine import AsyncEngine, EngineDeadError, RequestStream
from corral.server.streams import (
    ChunkWriter,
    ClientDisconnected,
    DeltaTracker,
    add_all,
    final_outputs,
    merged,
    usage,
)


class ScriptedEngine:
    """Stands in for LLMEngine: request "abc" emits "a", "ab", "abc" (token ids: the code points), one
    character per step, up to max_tokens; an empty prompt is refused; ``fail_at_step`` makes that step raise."""

    def __init__(self, step_delay: float = 0.005, fail_at_step: int | None = None):
        self.step_delay = step_delay
        self.fail_at_step = fail_at_step
        self.num_steps = 0
        self.added: dict[str, tuple] = {}  # request id -> (prompt, params)
        self.aborted: list[str] = []
        self.running: dict[str, list] = {}  # request id -> [text to emit, characters emitted]
        self.core = SimpleNamespace(scheduler=SimpleNamespace(waiting=[]))

    def add_request(self, request_id: str, prompt, params: SamplingParams, priority: int = 0, grammar=None) -> None:
        if not prompt:
            raise InvalidRequestError("prompt must not be empty")
        text = prompt if isinstance(prompt, str) else "".join(map(chr, prompt))
        self.running[request_id] = [text[: params.max_tokens], 0]
        self.added[request_id] = (prompt, params)

    def abort_request(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> list[RequestOutput]:
        self.num_steps += 1
        time.sleep(self.step_delay)
        if self.num_steps == self.fail_at_step:
            raise RuntimeError("boom")
        outputs = []
        for request_id, state in list(self.running.items()):
            state[1] += 1
            text = state[0][: state[1]]
            done = state[1] == len(state[0])
            completion = CompletionOutput(
                0, text, [ord(c) for c in text], finish_reason="length" if done else None
            )
            outputs.append(RequestOutput(request_id, None, [1, 2], [completion], finished=done))
            if done:
                del self.running[request_id]
        return outputs


def run(coro: Coroutine):
    """asyncio.run with a deadline, so a mutant that never ends merged() fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


async def collect(stream: RequestStream) -> list[RequestOutput]:
    return [output async for output in stream]


async def commands_applied(engine: AsyncEngine) -> None:
    """Commands are applied in order: once this request has run, every earlier abort has reached the engine."""
    async for _ in await engine.add_request("z", SamplingParams(max_tokens=1), "barrier"):
        pass


@pytest.fixture
def scripted():
    engines: list[AsyncEngine] = []

    def make(**kwargs) -> AsyncEngine:
        engines.append(AsyncEngine(ScriptedEngine(**kwargs)))
        return engines[-1]

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    args = EngineArgs(
        model=tiny_model_dir,
        dtype="float32",
        quantization="none",
        max_model_len=64,
        kv_cache_memory=4 * 1024**2,
    )
    engine = AsyncEngine(build_engine(args))
    yield engine
    engine.shutdown()


def test_add_all_queues_each_prompt_with_the_params_under_base_id_and_index(scripted):
    engine = scripted()
    params = SamplingParams(max_tokens=2)

    async def go() -> list[list[RequestOutput]]:
        streams = await add_all(engine, ["abc", [120, 121, 122]], params, "cmpl-9")
        assert [s.request_id for s in streams] == ["cmpl-9-0", "cmpl-9-1"]
        return [await collect(s) for s in streams]

    outputs = run(go())
    assert engine.engine.added == {"cmpl-9-0": ("abc", params), "cmpl-9-1": ([120, 121, 122], params)}
    assert [[o.outputs[0].text for o in stream] for stream in outputs] == [["a", "ab"], ["x", "xy"]]


def test_add_all_aborts_the_added_requests_and_reraises_when_a_later_one_is_refused(scripted):
    engine = scripted()

    async def go() -> None:
        with pytest.raises(InvalidRequestError, match="must not be empty"):
            await add_all(engine, ["abc" * 40, "", "xyz"], SamplingParams(max_tokens=200), "r")
        await commands_applied(engine)

    run(go())
    fake = engine.engine
    assert list(fake.added) == ["r-0", "barrier"]  # "xyz" was never sent
    assert "r-0" in fake.aborted and not fake.running


def test_merged_yields_every_cumulative_output_with_its_prompt_index(scripted):
    engine = scripted()

    async def go() -> list[tuple[int, RequestOutput]]:
        streams = await add_all(engine, ["abc", "xy"], SamplingParams(), "m")
        items = [item async for item in merged(streams)]
        await commands_applied(engine)
        return items

    items = run(go())
    assert all(isinstance(output, RequestOutput) for _, output in items)
    texts = {i: [o.outputs[0].text for j, o in items if j == i] for i in (0, 1)}
    assert texts == {0: ["a", "ab", "abc"], 1: ["x", "xy"]}
    assert len(items) == 5
    assert [o.request_id for i, o in items if i == 1] == ["m-1", "m-1"]
    assert engine.engine.aborted == []  # finished requests are not aborted


def test_merged_of_no_streams_yields_nothing():
    async def go() -> list:
        return [item async for item in merged([])]

    assert run(go()) == []


def test_closing_merged_early_aborts_every_request(scripted):
    engine = scripted(step_delay=0.01)

    async def go() -> list[RequestStream]:
        streams = await add_all(engine, ["a" * 100, "b" * 100], SamplingParams(max_tokens=100), "m")
        outputs = merged(streams)
        index, first = await outputs.__anext__()
        assert first.outputs[0].text == "ab"[index]
        await outputs.aclose()
        assert all(s.finished for s in streams)
        await commands_applied(engine)
        return streams

    run(go())
    assert sorted(engine.engine.aborted) == ["m-0", "m-1"]
    assert list(engine.engine.running) == []


def test_merged_reraises_a_requests_error_and_aborts_the_others(scripted):
    engine = scripted()
    first = RequestOutput("e-0", None, [1], [CompletionOutput(0, "a", [97])])

    async def go() -> None:
        failing, pending = asyncio.Queue(), asyncio.Queue()  # "e-1" never produces anything
        failing.put_nowait(first)
        failing.put_nowait(ValueError("bad request"))
        streams = [RequestStream(engine, "e-0", failing), RequestStream(engine, "e-1", pending)]
        seen = []
        with pytest.raises(ValueError, match="bad request"):
            async for item in merged(streams):
                seen.append(item)
        assert seen == [(0, first)]
        assert streams[1].finished  # aborted by merged itself, before its pump was cancelled
        for _ in range(3):
            await asyncio.sleep(0)
        assert not [t for t in asyncio.all_tasks() if "pump" in t.get_coro().__qualname__]
        await commands_applied(engine)

    run(go())
    assert engine.engine.aborted == ["e-1"]


def test_final_outputs_is_each_prompts_last_output_in_prompt_order(scripted):
    engine = scripted()

    async def go() -> list[RequestOutput]:
        # the second prompt finishes two steps before the first
        return await final_outputs(await add_all(engine, ["abcd", "xy"], SamplingParams(), "f"))

    finals = run(go())
    assert [(o.request_id, o.outputs[0].text, o.finished) for o in finals] == [
        ("f-0", "abcd", True),
        ("f-1", "xy", True),
    ]


def test_final_outputs_aborts_every_request_when_the_client_goes_first(scripted):
    engine = scripted(step_delay=0.05)
    gone = asyncio.Event()

    async def go() -> None:
        streams = await add_all(engine, ["a" * 200, "b" * 200], SamplingParams(max_tokens=200), "g")
        asyncio.get_running_loop().call_later(0.2, gone.set)
        with pytest.raises(ClientDisconnected):
            await final_outputs(streams, gone.wait())
        assert all(s.finished for s in streams), "the aborts must be sent before final_outputs returns"
        await commands_applied(engine)

    run(go())
    assert sorted(engine.engine.aborted) == ["g-0", "g-1"]
    assert engine.engine.num_steps < 50, "the requests ran on after the client left"


def test_final_outputs_ignores_a_client_that_stays(scripted):
    engine = scripted()

    async def go() -> list[RequestOutput]:
        return await final_outputs(await add_all(engine, ["abc"], SamplingParams(), "s"), asyncio.Event().wait())

    assert [o.outputs[0].text for o in run(go())] == ["abc"]
    assert engine.engine.aborted == []


def test_final_outputs_reraises_a_crashed_step(scripted):
    engine = scripted(fail_at_step=2)

    async def go() -> None:
        await final_outputs(await add_all(engine, ["abc", "xyz"], SamplingParams(), "c"))

    with pytest.raises(EngineDeadError, match="boom"):
        run(go())


def test_delta_sends_only_what_is_new_of_each_cumulative_output():
    tracker = DeltaTracker()
    assert tracker == DeltaTracker(num_chars=0, num_tokens=0, finished=False, echoed=False)
    steps = [
        ("Hé", [10]),
        ("Héllo", [10, 11]),
        ("Héllo wor", [10, 11, 12, 13]),
        ("Héllo wor", [10, 11, 12, 13]),
    ]
    deltas = [tracker.delta(CompletionOutput(0, text, ids)) for text, ids in steps]
    assert deltas == [("Hé", [10], 0), ("llo", [11], 1), (" wor", [12, 13], 2), ("", [], 4)]
    assert (tracker.num_chars, tracker.num_tokens) == (9, 4)


def test_usage_sums_prompts_and_every_completion():
    outputs = [
        RequestOutput("a", None, [1, 2, 3], [CompletionOutput(0, "", [4, 5]), CompletionOutput(1, "", [6])]),
        RequestOutput(
            "b", None, [7], [CompletionOutput(0, "", [8, 9, 10]), CompletionOutput(1, "", [1, 2, 3, 4])]
        ),
    ]
    assert usage(outputs) == {"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14}
    assert usage([]) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_chunk_writer_formats_one_sse_event():
    write = ChunkWriter("cmpl-1", "text_completion", 1700000000, "tiny")
    choices = [{"index": 0, "text": "hi", "finish_reason": None}]
    line = write(choices)
    assert line == (
        'data: {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny", '
        '"choices": [{"index": 0, "text": "hi", "finish_reason": null}]}\n\n'
    )
    counts = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    line = write([], counts)
    assert line.startswith("data: ") and line.endswith("}\n\n") and line.count("\n") == 2
    assert json.loads(line.removeprefix("data: ")) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "tiny",
        "choices": [],
        "usage": counts,
    }


def test_streaming_two_prompts_with_n_2_from_the_tiny_model(tiny_engine):
    params = SamplingParams(n=2, max_tokens=4, temperature=0.0, ignore_eos=True)
    trackers: dict[tuple[int, int], DeltaTracker] = {}
    texts: dict[tuple[int, int], str] = defaultdict(str)
    ids: dict[tuple[int, int], list[int]] = defaultdict(list)
    starts: dict[tuple[int, int], list[int]] = defaultdict(list)
    finals: dict[int, RequestOutput] = {}

    async def go() -> list[RequestOutput]:
        async for index, output in merged(await add_all(tiny_engine, [[5, 6, 7], [8, 9]], params, "t")):
            finals[index] = output
            for completion in output.outputs:
                key = (index, completion.index)
                text, new_ids, start = trackers.setdefault(key, DeltaTracker()).delta(completion)
                texts[key] += text
                ids[key] += new_ids
                starts[key].append(start)
        return await final_outputs(await add_all(tiny_engine, [[5, 6, 7], [8, 9]], params, "u"))

    again = run(go())
    assert sorted(trackers) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for index, choice in trackers:
        completion = finals[index].outputs[choice]
        assert texts[index, choice] == completion.text and ids[index, choice] == completion.token_ids
        assert len(completion.token_ids) == 4 and starts[index, choice] == [0, 1, 2, 3]  # one token a step
    assert [(o.request_id, o.prompt_token_ids) for o in again] == [("u-0", [5, 6, 7]), ("u-1", [8, 9])]
    assert usage(again) == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
