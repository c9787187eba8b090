"""`corral serve`'s defaults: the served model name is the model file's name without its quant tag."""

from __future__ import annotations

import argparse

import pytest

from corral.cli.serve import add_arguments, served_name


@pytest.mark.parametrize("path,name", [
    ("/m/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
    ("/m/SmolLM2-1.7B-Instruct.Q4_K_M.gguf", "SmolLM2-1.7B-Instruct"),
    ("/m/qwen2-0.5b-f16.gguf", "qwen2-0.5b"),
    ("/m/Llama-3.2-1B-IQ4_XS.gguf", "Llama-3.2-1B"),
    ("/m/plain.gguf", "plain"),
    ("/m/hf-folder/", "hf-folder"),
])
def test_served_name(path, name):
    assert served_name(path) == name


def test_default_model_name_and_flags():
    assert served_name(None) == "SmolLM2-135M-Instruct"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "9000", "--no-enable-prefix-caching", "--api-key", "k"])
    assert (args.host, args.port, args.enable_prefix_caching, args.api_key) == ("127.0.0.1", 9000, False, "k")


def test_default_server_repeats_greedy_answers(corral_serve):
    """`corral serve` with its defaults answers the same greedy chat request the same way every time, though
    every repeat's prompt comes from the prefix cache (these prompts forked on their second run before the
    prompt's last block was attended per token). Packed linears and model-dtype prefill attention: the bf16
    paths that `auto` picks on AMX hosts make a row's rounding depend on its batch (docs/performance.md)."""
    import httpx

    base = corral_serve("--batched-linears", "packed", "--prefill-attention", "model")
    questions = ["Write a poem about the sea.", "Explain how a CPU cache works.", "Tell me a joke about programmers."]
    for question in questions:
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": question}],
                "max_tokens": 48, "temperature": 0}
        answers = []
        for _ in range(3):
            response = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            answers.append(response.json()["choices"][0]["message"]["content"])
        assert answers == [answers[0]] * 3, question
    metrics = httpx.get(base + "/metrics").text
    hits = next(line for line in metrics.splitlines() if line.startswith("corral:prefix_cache_hits_total"))
    assert float(hits.split()[-1]) > 0, "no prefix-cache hit: the test proves nothing"


def test_request_limit_flags_reach_the_server(corral_serve):
    import httpx

    base = corral_serve("--max-prompts-per-request", "2", "--max-stop-strings", "1", "--max-request-bytes", "2000")
    body = {"model": "SmolLM2-135M-Instruct", "prompt": ["a", "b"], "max_tokens": 1}
    assert httpx.post(base + "/v1/completions", json=body, timeout=60).status_code == 200
    for too_much, param in (({"prompt": ["a", "b", "c"]}, "prompt"), ({"stop": ["x", "y"]}, "stop")):
        response = httpx.post(base + "/v1/completions", json={**body, **too_much}, timeout=60)
        assert (response.status_code, response.json()["error"]["param"]) == (400, param)
    response = httpx.post(base + "/v1/completions", json={**body, "prompt": "x" * 3000}, timeout=60)
    assert response.status_code == 413


def test_a_request_limit_below_one_is_a_flag_error():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-stop-strings", "0"])
