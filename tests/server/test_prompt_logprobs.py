"""The prompt's logprobs over HTTP: completions' echo with logprobs (the legacy shape lm-evaluation-harness scores
with), max_tokens 0 with echo, and vLLM's prompt_logprobs extra on completions and chat, streamed and not; every
value equal to the offline engine's prompt logprobs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import httpx
import pytest

from corral import LLM, SamplingParams
from corral.outputs import CompletionOutput
from corral.server import completions
from corral.server.protocol import CompletionRequest

from .conftest import ENGINE_ARGS, MODEL_NAME

PROMPT = "The capital of France is Paris, and the capital of Italy is"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def offline():
    return LLM(dtype=ENGINE_ARGS.dtype, quantization=ENGINE_ARGS.quantization,
               max_model_len=ENGINE_ARGS.max_model_len, kv_cache_memory=ENGINE_ARGS.kv_cache_memory,
               batch_invariant=ENGINE_ARGS.batch_invariant)


@pytest.fixture(scope="module")
def expected(offline):
    """The offline engine's output for PROMPT with 2 prompt logprobs and 2 greedy tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=2, logprobs=2, prompt_logprobs=2)
    return offline.generate(PROMPT, params, use_tqdm=False)[0]


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json={"model": MODEL_NAME, **body}, headers=server.headers(), timeout=120)


def completion(server, **body) -> dict:
    response = post(server, "/v1/completions", body)
    assert response.status_code == 200, response.text
    return response.json()


def streamed(server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", server.base_url + path, json={"model": MODEL_NAME, "stream": True, **body},
                      headers=server.headers(), timeout=120) as response:
        assert response.status_code == 200
        lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def assert_prompt_part(logprobs: dict, output, tokenizer) -> None:
    """The first len(prompt) entries of a legacy logprobs object against the engine's prompt logprobs."""
    prompt_ids = output.prompt_token_ids
    num = len(prompt_ids)
    tokens = [tokenizer.decode([t], skip_special_tokens=False) for t in prompt_ids]
    assert logprobs["tokens"][:num] == tokens
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["text_offset"][:num] == [sum(map(len, tokens[:i])) for i in range(num)]
    for i in range(1, num):
        entry = output.prompt_logprobs[i]
        assert logprobs["token_logprobs"][i] == pytest.approx(entry[prompt_ids[i]].logprob, abs=1e-3)
        want = {lp.decoded_token: lp.logprob for lp in entry.values()}
        assert logprobs["top_logprobs"][i] == pytest.approx(want, abs=1e-3)


def test_echo_with_logprobs_puts_the_prompt_first(server, expected):
    tokenizer = server.engine.engine.tokenizer
    body = completion(server, prompt=PROMPT, echo=True, logprobs=2, max_tokens=2, temperature=0)
    choice = body["choices"][0]
    generated = expected.outputs[0]
    assert choice["text"] == PROMPT + generated.text
    logprobs = choice["logprobs"]
    num = len(expected.prompt_token_ids)
    assert len(logprobs["tokens"]) == num + 2
    assert_prompt_part(logprobs, expected, tokenizer)
    plain = completion(server, prompt=PROMPT, logprobs=2, max_tokens=2, temperature=0)["choices"][0]["logprobs"]
    assert logprobs["tokens"][num:] == plain["tokens"]
    assert logprobs["token_logprobs"][num:] == pytest.approx(plain["token_logprobs"], abs=1e-4)
    assert logprobs["text_offset"][num:] == [o + len(PROMPT) for o in plain["text_offset"]]
    assert "prompt_logprobs" not in choice
    assert body["usage"]["completion_tokens"] == 2


def test_echo_with_logprobs_of_token_id_prompts_and_several_choices(server, expected):
    tokenizer = server.engine.engine.tokenizer
    ids = expected.prompt_token_ids
    body = completion(server, prompt=[ids, ids[:5]], echo=True, logprobs=2, max_tokens=1, n=2, temperature=1.0,
                      seed=3)
    assert len(body["choices"]) == 4
    for choice in body["choices"][:2]:
        assert choice["text"].startswith(tokenizer.decode(ids))
        assert_prompt_part(choice["logprobs"], expected, tokenizer)
        assert len(choice["logprobs"]["tokens"]) == len(ids) + 1
    for choice in body["choices"][2:]:
        assert len(choice["logprobs"]["tokens"]) == 6
        assert choice["logprobs"]["token_logprobs"][1] == pytest.approx(
            expected.prompt_logprobs[1][ids[1]].logprob, abs=1e-3)


def test_max_tokens_zero_with_echo_returns_the_prompt_alone(server, expected):
    body = completion(server, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
    choice = body["choices"][0]
    assert choice["text"] == PROMPT
    assert choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(expected.prompt_token_ids)
    assert_prompt_part(choice["logprobs"], expected, server.engine.engine.tokenizer)
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)
    echo_only = completion(server, prompt=PROMPT, echo=True, max_tokens=0)["choices"][0]
    assert echo_only["text"] == PROMPT and echo_only["logprobs"] is None


def test_max_tokens_zero_without_echo_is_refused(server):
    for body in ({"prompt": PROMPT, "max_tokens": 0}, {"prompt": PROMPT, "max_tokens": 0, "logprobs": 1}):
        response = post(server, "/v1/completions", body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "max_tokens"
    chat = post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0})
    assert chat.status_code == 400


def vllm_shape(prompt_logprobs) -> list:
    return [None] + [
        {str(t): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token} for t, lp in e.items()}
        for e in prompt_logprobs[1:]
    ]


def assert_vllm_shape(got: list, prompt_logprobs) -> None:
    want = vllm_shape(prompt_logprobs)
    assert len(got) == len(want) and got[0] is None
    for got_entry, want_entry in zip(got[1:], want[1:], strict=True):
        assert got_entry.keys() == want_entry.keys()
        for token_id, lp in want_entry.items():
            assert got_entry[token_id]["logprob"] == pytest.approx(lp["logprob"], abs=1e-3)
            assert (got_entry[token_id]["rank"], got_entry[token_id]["decoded_token"]) == (lp["rank"], lp["decoded_token"])


def test_prompt_logprobs_extra_on_completions(server, expected):
    body = completion(server, prompt=PROMPT, prompt_logprobs=2, max_tokens=2, temperature=0)
    choice = body["choices"][0]
    assert_vllm_shape(choice["prompt_logprobs"], expected.prompt_logprobs)
    assert choice["text"] == expected.outputs[0].text and choice["logprobs"] is None
    for bad in (21, -1):
        response = post(server, "/v1/completions", {"prompt": PROMPT, "prompt_logprobs": bad})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "prompt_logprobs"


def test_prompt_logprobs_extra_on_chat(server, offline):
    want = offline.chat(MESSAGES, SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=1), use_tqdm=False)[0]
    response = post(server, "/v1/chat/completions",
                    {"messages": MESSAGES, "prompt_logprobs": 1, "max_tokens": 3, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_vllm_shape(body["prompt_logprobs"], want.prompt_logprobs)
    assert body["choices"][0]["message"]["content"] == want.outputs[0].text
    chunks = streamed(server, "/v1/chat/completions",
                      {"messages": MESSAGES, "prompt_logprobs": 1, "max_tokens": 3, "temperature": 0})
    carrying = [c for c in chunks if c.get("prompt_logprobs") is not None]
    assert len(carrying) == 1
    assert_vllm_shape(carrying[0]["prompt_logprobs"], want.prompt_logprobs)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == want.outputs[0].text


def test_streamed_echo_with_logprobs_sends_the_prompt_first(server, expected):
    chunks = streamed(server, "/v1/completions",
                      {"prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": 2, "temperature": 0,
                       "prompt_logprobs": 2})
    choices = [c["choices"][0] for c in chunks]
    assert choices[0]["text"].startswith(PROMPT)
    assert "".join(c["text"] for c in choices) == PROMPT + expected.outputs[0].text
    assert_vllm_shape(choices[0]["prompt_logprobs"], expected.prompt_logprobs)
    assert all(c["prompt_logprobs"] is None for c in choices[1:])
    joined = {key: [v for c in choices for v in c["logprobs"][key]] for key in choices[0]["logprobs"]}
    whole = completion(server, prompt=PROMPT, echo=True, logprobs=2, max_tokens=2, temperature=0)["choices"][0]
    assert joined["tokens"] == whole["logprobs"]["tokens"]
    assert joined["text_offset"] == whole["logprobs"]["text_offset"]
    assert joined["token_logprobs"][1:] == pytest.approx(whole["logprobs"]["token_logprobs"][1:], abs=1e-4)
    assert_prompt_part(joined, expected, server.engine.engine.tokenizer)
    only = streamed(server, "/v1/completions", {"prompt": PROMPT, "echo": True, "logprobs": 1, "max_tokens": 0})
    assert "".join(c["choices"][0]["text"] for c in only) == PROMPT
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in only) == len(expected.prompt_token_ids)


class FakeStream:
    """A RequestStream that replays given outputs."""

    def __init__(self, outputs):
        self.outputs = outputs

    async def __aiter__(self):
        for output in self.outputs:
            yield output

    def abort(self) -> None:
        pass


def test_streamed_choices_wait_for_the_prompt_logprobs(server, expected):
    """With n > 1 only the first child computes the prompt's logprobs; another child reusing the cached prompt
    may sample first. Its first chunk waits for them, so every choice's echo carries the prompt's logprobs."""
    tokenizer = server.engine.engine.tokenizer
    generated = expected.outputs[0]

    def choice(index: int, num_tokens: int) -> CompletionOutput:
        return CompletionOutput(index, tokenizer.decode(generated.token_ids[:num_tokens]),
                                generated.token_ids[:num_tokens], generated.logprobs[:num_tokens])

    early = replace(expected, outputs=[choice(0, 0), choice(1, 1)], prompt_logprobs=None, finished=False)
    later = replace(expected, outputs=[choice(0, 1), choice(1, 2)], finished=False)
    last = replace(expected, outputs=[replace(choice(0, 2), finish_reason="length"),
                                      replace(choice(1, 2), finish_reason="length")], finished=True)
    request = CompletionRequest(model=MODEL_NAME, prompt=PROMPT, echo=True, logprobs=2, n=2, stream=True)

    async def collect() -> list[dict]:
        body = completions._stream([FakeStream([early, later, last])], request, "id", 0, MODEL_NAME, tokenizer,
                                   echo_only=False)
        return [json.loads(event[len("data: "):]) async for event in body if event != "data: [DONE]\n\n"]

    chunks = asyncio.run(collect())
    for index in (0, 1):
        first = next(c["choices"][0] for c in chunks if c["choices"][0]["index"] == index)
        assert first["text"].startswith(PROMPT)
        assert_prompt_part(first["logprobs"], expected, tokenizer)


def test_tokenizer_info_names_the_special_tokens(server):
    response = httpx.get(server.base_url + "/tokenizer_info", headers=server.headers(), timeout=30)
    assert response.status_code == 200
    tokenizer = server.engine.engine.tokenizer
    assert response.json()["eos_token"] == tokenizer.eos_token
    assert response.json()["chat_template"] == tokenizer.chat_template
    assert httpx.get(server.base_url + "/tokenizer_info", timeout=30).status_code == 401
