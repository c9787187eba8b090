"""The official `openai` client against a live server: completions and chat, streaming and not,
usage counts, greedy equality with the offline engine, stop strings in streams, concurrency and disconnects."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral import LLM, SamplingParams

from .conftest import API_KEY, ENGINE_ARGS, MODEL_NAME


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def offline():
    return LLM(dtype=ENGINE_ARGS.dtype, quantization=ENGINE_ARGS.quantization,
               max_model_len=ENGINE_ARGS.max_model_len, kv_cache_memory=ENGINE_ARGS.kv_cache_memory,
               batch_invariant=ENGINE_ARGS.batch_invariant)


def offline_greedy(offline, prompt, max_tokens):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    return offline.generate(prompt, params, use_tqdm=False)[0].outputs[0]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_completion_matches_offline_and_counts_usage(client, offline):
    prompt = "The capital of France is"
    result = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0)
    expected = offline_greedy(offline, prompt, 12)
    assert result.choices[0].text == expected.text
    tokenizer = offline.get_tokenizer()
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert result.usage.completion_tokens == len(expected.token_ids)
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_streaming_completion_equals_non_streaming(client):
    kwargs = dict(model=MODEL_NAME, prompt="def add(a, b):", max_tokens=16, temperature=0)
    full = client.completions.create(**kwargs).choices[0]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.finish_reason
    assert chunks[-1].usage.completion_tokens == 16


def test_list_prompts_token_ids_and_n(client, offline):
    tokenizer = offline.get_tokenizer()
    ids = tokenizer.encode("Water boils at")
    result = client.completions.create(model=MODEL_NAME, prompt=["Water boils at", "Hello"], max_tokens=5, temperature=0.8,
                                       n=2, seed=3)
    assert sorted(c.index for c in result.choices) == [0, 1, 2, 3]
    greedy = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0)
    assert greedy.choices[0].text == offline_greedy(offline, ids, 6).text


def test_chat_streaming_and_not(client, offline):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, temperature=0)
    expected = offline.chat(messages, SamplingParams(temperature=0, max_tokens=20), use_tqdm=False)[0]
    assert full.choices[0].message.content == expected.outputs[0].text
    assert full.usage.prompt_tokens == len(expected.prompt_token_ids)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == full.choices[0].message.content


def test_chat_logprobs_and_stop(client):
    messages = [{"role": "user", "content": "Count from one to ten."}]
    result = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=2)
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in content)
    text = result.choices[0].message.content
    stop = text[3:6]
    stopped = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0,
                                             stop=[stop])
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_64_concurrent_streams_complete_and_match_offline(server, offline):
    prompts = [f"Story number {i}: once upon a time" for i in range(64)]

    async def one(http: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": True}
        text = ""
        async with http.stream("POST", server.base_url + "/v1/completions", json=body,
                               headers=server.headers()) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    async def run_all() -> list[str]:
        async with httpx.AsyncClient(timeout=180, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.wait_for(asyncio.gather(*(one(http, p) for p in prompts)), timeout=240)

    texts = asyncio.run(run_all())
    params = SamplingParams(temperature=0, max_tokens=12)
    expected = [o.outputs[0].text for o in offline.generate(prompts, params, use_tqdm=False)]
    assert texts == expected
    server.wait_idle()


def engine_gauges(server) -> tuple[float, float]:
    """(num_requests_running, kv_cache_usage_perc) as /metrics reports them."""
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values["corral:num_requests_running"], values["corral:kv_cache_usage_perc"]


def wait_idle_within(server, seconds: float) -> float:
    """Polls until no request is left, every KV block is free and /metrics says so; the time it took, or fails
    after ``seconds``."""
    core = server.engine.engine.core
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if (not core.has_unfinished_requests() and core.kv_manager.num_free_blocks == core.kv_manager.num_blocks
                and engine_gauges(server) == (0, 0)):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"still {len(core.scheduler.running)} running, {len(core.scheduler.waiting)} waiting, "
                         f"/metrics (running, KV usage) {engine_gauges(server)}, {seconds} s after the clients left")


# 512 tokens each (the fixture's cap), several requests at once: tens of seconds of decoding on this CPU,
# so an engine idle within 1 s of the disconnect can only come from the abort.
LONG = {"model": MODEL_NAME, "max_tokens": 512, "temperature": 0, "ignore_eos": True}


@pytest.mark.parametrize("shape", [
    {"prompt": "Tell me a long story."},
    {"prompt": "Tell me a long story.", "n": 3},
    {"prompt": ["Tell me a long story.", "Write a long poem.", "List every country."]},
])
def test_streaming_clients_that_leave_abort_their_requests_at_once(server, shape):
    async def leave_after_two_chunks(http: httpx.AsyncClient) -> None:
        body = {**LONG, **shape, "stream": True}
        async with http.stream("POST", server.base_url + "/v1/completions", json=body,
                               headers=server.headers()) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 2:
                    break  # leaving the block closes the connection

    async def run_all() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.gather(*(leave_after_two_chunks(http) for _ in range(4)))

    asyncio.run(run_all())
    wait_idle_within(server, 1.0)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {**LONG, "prompt": "Tell me a long story.", "n": 2}),
    ("/v1/completions", {**LONG, "prompt": ["Tell me a long story.", "Write a long poem."]}),
    ("/v1/chat/completions", {**LONG, "messages": [{"role": "user", "content": "Tell me a long story."}]}),
])
def test_non_streaming_clients_that_leave_abort_their_requests_at_once(server, path, body):
    core = server.engine.engine.core

    async def leave_once_running() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            task = asyncio.create_task(http.post(server.base_url + path, json=body, headers=server.headers()))
            deadline = time.monotonic() + 30
            while not core.scheduler.running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert core.scheduler.running, "the request never started"
            await asyncio.sleep(0.3)
            task.cancel()  # drops the connection mid-request
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(leave_once_running())
    wait_idle_within(server, 1.0)


def test_echo_puts_the_prompt_before_the_text(client):
    prompt = "Once upon a time"
    kwargs = dict(model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0)
    plain = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(echo=True, **kwargs).choices[0].text == prompt + plain
    streamed = "".join(c.choices[0].text for c in client.completions.create(echo=True, stream=True, **kwargs))
    assert streamed == prompt + plain


def stop_spanning_three_tokens(tokens: list[str], text: str) -> tuple[str, int]:
    """A stop string made of the last character of one token, the whole next token and the first character of
    the one after, whose first occurrence in ``text`` is that one; and where it starts. The first character
    arrives with text before it, so only a hold-back keeps it out of the stream."""
    offsets = [0]
    for token in tokens:
        offsets.append(offsets[-1] + len(token))
    for i in range(1, len(tokens) - 2):
        if len(tokens[i]) < 2 or not tokens[i + 1] or not tokens[i + 2]:
            continue
        start = offsets[i + 1] - 1
        stop = text[start : offsets[i + 2] + 1]
        if text.find(stop) == start and not stop.isspace():
            return stop, start
    raise AssertionError(f"no stop string spanning three tokens in {tokens!r}")


def assert_stopped_stream_equals_unstopped_text_cut(create, kwargs, text_of, delta_of, text, tokens):
    """With a stop string spanning three tokens of the unstopped greedy ``text``: the non-streamed text and the
    joined streamed deltas are both ``text`` cut before it (no piece of it is streamed and then taken back)."""
    assert "".join(tokens) == text  # ASCII output: each token's text is its piece of the whole
    stop, start = stop_spanning_three_tokens(tokens, text)
    stopped = create(stop=[stop], **kwargs).choices[0]
    assert (text_of(stopped), stopped.finish_reason, stopped.stop_reason) == (text[:start], "stop", stop)
    chunks = [c for c in create(stop=[stop], stream=True, **kwargs) if c.choices]
    assert "".join(delta_of(c.choices[0]) for c in chunks) == text[:start]
    last = chunks[-1].choices[0]
    assert (last.finish_reason, last.stop_reason) == ("stop", stop)  # vLLM's extension, streamed too


def test_streamed_completion_with_a_stop_string_equals_non_streamed(client):
    """/v1/completions streams no part of a stop string that spans tokens."""
    kwargs = dict(model=MODEL_NAME, prompt="A list of fruits: apples, pears,", max_tokens=24, temperature=0)
    unstopped = client.completions.create(logprobs=0, **kwargs).choices[0]

    def text_of(choice):
        return choice.text

    assert_stopped_stream_equals_unstopped_text_cut(
        client.completions.create, kwargs, text_of, text_of, unstopped.text, unstopped.logprobs.tokens
    )


def test_streamed_chat_with_a_stop_string_equals_non_streamed(client):
    """/v1/chat/completions streams no part of a stop string that spans tokens."""
    messages = [{"role": "user", "content": "Name three fruits and say why they are healthy."}]
    kwargs = dict(model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0)
    unstopped = client.chat.completions.create(logprobs=True, **kwargs).choices[0]

    def text_of(choice):
        return choice.message.content

    def delta_of(choice):
        return choice.delta.content or ""

    tokens = [entry.token for entry in unstopped.logprobs.content]
    assert_stopped_stream_equals_unstopped_text_cut(
        client.chat.completions.create, kwargs, text_of, delta_of, unstopped.message.content, tokens
    )


def test_completion_text_offsets_point_at_each_token_streamed_or_not(client):
    kwargs = dict(model=MODEL_NAME, prompt="A list of fruits: apples, pears,", max_tokens=16, temperature=0,
                  logprobs=1)
    choice = client.completions.create(**kwargs).choices[0]
    tokens, offsets = choice.logprobs.tokens, choice.logprobs.text_offset
    assert "".join(tokens) == choice.text  # ASCII output: the tokens spell the text
    assert offsets[0] == 0 and [choice.text[o : o + len(t)] for o, t in zip(offsets, tokens)] == tokens
    streamed = [c.choices[0].logprobs for c in client.completions.create(stream=True, **kwargs) if c.choices]
    assert [o for lp in streamed if lp for o in lp.text_offset] == offsets
