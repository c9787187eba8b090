"""Prompts are tokenized off the engine's thread and the event loop, and one that cannot fit the context is
refused after its head: while oversized prompts are being refused, small requests keep their idle latency."""

from __future__ import annotations

import gc
import statistics
import threading
import time

import httpx
import pytest

from corral.errors import PromptTooLongError
from corral.loader.default_model import default_model_path
from corral.loader.tokenizer import load_tokenizer
from corral.server.prompt_tokens import HEAD_CHARS_PER_TOKEN, encode_bounded

from .conftest import API_KEY, ENGINE_ARGS, MODEL_NAME

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXT = "The committee met on Tuesday, approved the budget for the new library, and adjourned at noon. "


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_path())


def test_a_head_that_overflows_refuses_the_prompt(tokenizer):
    text = TEXT * 2000  # about 190,000 characters, 40,000 tokens
    with pytest.raises(PromptTooLongError, match="at least"):
        encode_bounded(tokenizer, text, max_model_len=512)


def test_a_long_prompt_that_fits_is_tokenized_whole(tokenizer):
    text = "=" * (512 * HEAD_CHARS_PER_TOKEN + 100) + " end"  # many characters, few tokens
    assert encode_bounded(tokenizer, text, max_model_len=512) == tokenizer.encode(text)
    assert len(tokenizer.encode(text)) < 512


def test_the_heads_tokens_begin_the_whole_prompts(tokenizer):
    """What the early refusal rests on: cut before a space, the head's tokens are the whole text's first ones."""
    text = TEXT * 40 + "Unicode too: naïve café, 東京, emoji 🙂. " * 20
    for cut in (37, 501, 1203, 2999, len(text) - 9):
        cut = text.rfind(" ", 0, cut)
        head, whole = tokenizer.encode(text[:cut]), tokenizer.encode(text)
        assert whole[: len(head)] == head


def small_request_seconds(base_url: str) -> float:
    start = time.perf_counter()
    response = httpx.post(base_url + "/v1/completions", headers=AUTH, timeout=60,
                          json={"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    return time.perf_counter() - start


def rss_mib() -> int:
    """This process's resident memory (the server under test runs in it)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024


HUGE = TEXT * 40_000  # 3.8 MB: under the body limit, about 800,000 tokens
OVERSIZED = {
    "completions": ("/v1/completions", {"model": MODEL_NAME, "prompt": HUGE, "max_tokens": 4}),
    "chat": ("/v1/chat/completions", {"model": MODEL_NAME, "max_tokens": 4,
                                      "messages": [{"role": "user", "content": HUGE}]}),
}


@pytest.mark.parametrize("kind", OVERSIZED)
def test_small_requests_keep_their_latency_and_memory_stays_while_oversized_prompts_are_refused(server, kind):
    """Chat prompts are bounded too: before, a 3.8 MB chat was tokenized whole (about 4 s) and left the server
    about 550 MiB larger."""
    path, body = OVERSIZED[kind]
    idle = statistics.median(small_request_seconds(server.base_url) for _ in range(5))
    idle_rss = rss_mib()
    refusals: list[httpx.Response] = []
    stop = threading.Event()

    def attack() -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(20):  # bounded in count and time
                if stop.is_set():
                    return
                refusals.append(client.post(server.base_url + path, headers=AUTH, json=body))

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        time.sleep(0.2)
        under_attack = statistics.median(small_request_seconds(server.base_url) for _ in range(5))
    finally:
        stop.set()
        attacker.join(timeout=120)
    assert under_attack <= 2 * idle + 0.05, f"idle {idle * 1000:.0f} ms, under attack {under_attack * 1000:.0f} ms"
    assert refusals and all(r.status_code == 400 for r in refusals), refusals[0].text
    assert "at least" in refusals[0].json()["error"]["message"]
    assert ENGINE_ARGS.max_model_len * HEAD_CHARS_PER_TOKEN < len(HUGE) / 100  # the head is a sliver of it
    gc.collect()
    assert rss_mib() - idle_rss < 200, f"resident memory grew from {idle_rss} to {rss_mib()} MiB"
