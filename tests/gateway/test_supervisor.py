"""Local replicas under the gateway's supervisor, and one killed mid-load: requests that had no byte out yet
are retried on the other replica and succeed, the stream it was serving ends with an OpenAI-shaped error
event, the gateway stays healthy, and the supervisor restarts the replica, which then takes requests again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from corral.gateway.supervisor import free_port

from .conftest import sse_events


def test_a_replica_killed_mid_load_is_routed_around_and_restarted(tiny_model_dir, run_gateway):
    args = ["--model", tiny_model_dir, "--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2)]
    gw = run_gateway({"groups": {"tiny": {
        "backends": [{"local": args, "name": "r0"}, {"local": args, "name": "r1"}],
        "routing": {"policy": "round_robin"}, "retries": 1,
        "health": {"interval_s": 0.2, "metrics_interval_s": 0.2},
        "replicas": {"backoff_initial_s": 0.2, "startup_timeout_s": 120},
    }}})
    gw.wait_available("tiny", 2)
    url = gw.base_url + "/v1/completions"

    # A long stream, then non-streaming requests on both replicas (round robin), all in flight.
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True,
            "temperature": 0}
    stream_lines: list[str] = []
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as stream:
        lines = stream.iter_lines()
        stream_lines.append(next(lines))
        victim = next(b for b in gw.status("tiny") if b["in_flight"] == 1)
        results: list[int] = []

        def post(i: int) -> None:
            response = httpx.post(url, json={**body, "prompt": f"Request {i}", "max_tokens": 60}, timeout=120)
            results.append(response.status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while next(b for b in gw.status("tiny") if b["name"] == victim["name"])["in_flight"] < 3:
            assert time.monotonic() < deadline, gw.status("tiny")
            time.sleep(0.02)
        os.kill(victim["pid"], signal.SIGKILL)
        stream_lines.extend(lines)
        for thread in threads:
            thread.join(120)

    events = sse_events(stream_lines)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and victim["name"] in error["message"]
    assert results == [200] * 4
    assert gw.metric("corral_gateway_retries_total", group="tiny") >= 2
    assert gw.metric("corral_gateway_stream_errors_total", backend=victim["name"]) == 1
    assert httpx.get(gw.base_url + "/health").status_code == 200

    # The supervisor brings it back on a new process; round robin sends it requests again.
    backends = gw.wait_available("tiny", 2, timeout=120)
    restarted = next(b for b in backends if b["name"] == victim["name"])
    assert restarted["pid"] != victim["pid"] and restarted["restarts"] == 1
    assert gw.metric("corral_gateway_replica_restarts_total", backend=victim["name"]) == 1
    before = gw.metric("corral_gateway_requests_total", backend=victim["name"], status="200")
    for i in range(4):
        assert httpx.post(url, json={**body, "max_tokens": 2, "prompt": f"After {i}"}, timeout=60).status_code == 200
    assert gw.metric("corral_gateway_requests_total", backend=victim["name"], status="200") == before + 2


def test_the_command_serves_replicas_from_flags_and_stops_them_on_exit(tiny_model_dir):
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "gateway", "--model", tiny_model_dir, "--replicas", "1",
         "--served-model-name", "tiny", "--replica-args", f"--max-model-len 512 --kv-cache-memory {32 * 1024**2}",
         "--port", str(port), "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and gateway.poll() is None, "no replica came up"
            try:
                (backend,) = httpx.get(base + "/gateway/status", timeout=2).json()["groups"]["tiny"]["backends"]
                if backend["available"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert client.completions.create(model="tiny", prompt="Hello", max_tokens=4).choices[0].text
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    with pytest.raises(ProcessLookupError):  # terminated and reaped by the gateway
        os.kill(backend["pid"], 0)
