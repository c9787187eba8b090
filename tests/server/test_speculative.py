"""`corral serve --speculative-config ...`: streamed and plain completions equal the offline engine's greedy
text without speculation, /metrics counts the drafts; a bad config is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral import LLM, SamplingParams
from corral.kernels import cpu_extension

PROMPT = "Copy this list exactly: apples, pears, plums, cherries, apples, pears, plums, cherries.\nCopy:"
SPEC = {"method": "ngram", "num_speculative_tokens": 4}


def metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not on /metrics")


# Drafts change how many rows share each linear; only the kernels' linears are row-independent (runtime.py).
@pytest.mark.skipif(cpu_extension.load() is None, reason="C++ kernels not built: float linears depend on the batch")
def test_speculative_server_matches_plain_greedy_text_and_counts_drafts(corral_serve):
    want = LLM(max_model_len=512, kv_cache_memory=32 * 1024**2, batch_invariant=True).generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True), use_tqdm=False
    )[0].outputs[0].text
    base = corral_serve("--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2), "--batch-invariant",
                        "--speculative-config", json.dumps(SPEC))
    body = {"model": "SmolLM2-135M-Instruct", "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    response = httpx.post(base + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == want
    assert response.json()["usage"]["completion_tokens"] == 40

    streamed = []
    with httpx.stream("POST", base + "/v1/completions", json={**body, "stream": True}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                streamed.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(streamed) == want

    drafted = metric(base, "corral:spec_decode_num_draft_tokens_total")
    accepted = metric(base, "corral:spec_decode_num_accepted_tokens_total")
    assert 0 < accepted <= drafted
    assert metric(base, "corral:spec_decode_draft_acceptance_rate") == accepted / drafted


def test_bad_speculative_config_is_a_one_line_error():
    for config, message in (("{not json", "not valid JSON"), ('{"method": "lookahead"}', "unsupported speculative method")):
        result = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "serve", "--speculative-config", config],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode != 0
        # the error is the last line (argparse prints its usage above flag errors)
        assert message in result.stderr.strip().splitlines()[-1], result.stderr
