"""/metrics parses with prometheus-client's parser, carries vLLM's names, and moves as requests complete."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import API_KEY, MODEL_NAME

AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXPECTED = [
    "corral:time_to_first_token_seconds", "corral:inter_token_latency_seconds",
    "corral:e2e_request_latency_seconds", "corral:num_requests_running", "corral:num_requests_waiting",
    "corral:kv_cache_usage_perc", "corral:prefix_cache_queries", "corral:prefix_cache_hits",
    "corral:kv_cache_allocated_slot_steps", "corral:kv_cache_empty_slot_steps",
    "corral:prompt_tokens", "corral:generation_tokens", "corral:num_preemptions", "corral:request_success",
]


def scrape(server) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            key = sample.name + (f"{{{label}}}" if label else "")
            if "le" not in sample.labels:
                values[key] = sample.value
    return values


def test_metrics_names_parse_and_counters_move(server):
    before = scrape(server)
    names = {k.split("{")[0] for k in before}
    for name in EXPECTED:
        assert any(n.startswith(name) for n in names), name
    prompt = "Shared prefix for the metrics test. " * 8
    tokenizer = server.engine.engine.tokenizer
    num_prompt = sum(len(tokenizer.encode(prompt + s)) for s in ("one", "two"))
    for suffix in ("one", "two"):
        body = {"model": MODEL_NAME, "prompt": prompt + suffix, "max_tokens": 5, "temperature": 0,
                "ignore_eos": True}
        assert httpx.post(server.base_url + "/v1/completions", json=body, headers=AUTH, timeout=60).status_code == 200
    server.wait_idle()
    after = scrape(server)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("corral:generation_tokens_total") == 10
    assert delta("corral:prompt_tokens_total") == num_prompt
    assert delta("corral:request_success_total{finished_reason=length}") == 2
    assert delta("corral:time_to_first_token_seconds_count") == 2
    assert delta("corral:inter_token_latency_seconds_count") == 8
    assert delta("corral:e2e_request_latency_seconds_count") == 2
    assert delta("corral:prefix_cache_hits_total") >= 48  # the second prompt reuses the first's full blocks
    assert delta("corral:prefix_cache_queries_total") == num_prompt
    assert after["corral:num_requests_running"] == 0 and after["corral:kv_cache_usage_perc"] == 0
    # Blocks of 16 slots: each request's last block is partly empty while it runs.
    allocated, empty = delta("corral:kv_cache_allocated_slot_steps_total"), delta("corral:kv_cache_empty_slot_steps_total")
    assert allocated > 0 and 0 < empty < 16 * 10
