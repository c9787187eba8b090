"""The local autoscaling backend end to end: a real gateway whose group of real ``corral serve`` replicas (the tiny
random-weight model) grows from 1 to 2 under a burst, shrinks back to 1 when the load falls while requests are in
flight on the replica taken away (each streamed and non-streamed request gets its whole answer: the drain waited
for it), and replaces a replica the test kills; a request sent meanwhile waits for the new one."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx

from .conftest import RunningGateway, sse_events

NUM_TOKENS = 64


def check_answer(url: str, stream: bool, prompt: str, num_tokens: int = NUM_TOKENS) -> str | None:
    """None when the request got a complete answer (every token asked for, finished by length, no error event),
    else what was wrong with it."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": num_tokens, "ignore_eos": True, "temperature": 0}
    try:
        if not stream:
            response = httpx.post(url, json=body, timeout=120)
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:200]}"
            answer = response.json()
            choice = answer["choices"][0]
            complete = (choice["finish_reason"] == "length" and isinstance(choice["text"], str)
                        and answer["usage"]["completion_tokens"] == num_tokens)
            return None if complete else f"incomplete: {answer}"
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            if response.status_code != 200:
                return f"stream status {response.status_code}"
            events = sse_events(list(response.iter_lines()))
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    if not events or events[-1] != "[DONE]":
        return f"stream not ended by [DONE]: {events[-2:]}"
    chunks = [json.loads(event) for event in events[:-1]]
    if any("error" in chunk for chunk in chunks):
        return f"error event: {chunks[-1]}"
    usage = chunks[-1].get("usage") or {}
    finished = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return None if usage.get("completion_tokens") == num_tokens and finished == ["length"] else f"incomplete: {chunks[-2:]}"


class Load:
    """``num_loops`` threads, each sending one request after another (streamed and not, in turn) until stopped,
    recording every answer's problems (None: complete). With ``in_flight`` (the gateway's count), each loop starts
    once the previous one's first request is in flight: least-loaded routing then spreads them evenly."""

    def __init__(self, url: str, num_loops: int, name: str, num_tokens: int,
                 in_flight: Callable[[], int] | None = None):
        self.url, self.num_tokens, self.results = url, num_tokens, []
        self.stopped = threading.Event()
        # Loops 0 and 1 start with a stream, 2 and 3 without: placed in turn, each replica gets one of each.
        self.threads = [threading.Thread(target=self._loop, args=(f"{name}{i}", i // 2 % 2), daemon=True)
                        for i in range(num_loops)]
        for i, thread in enumerate(self.threads):
            thread.start()
            if in_flight is not None:
                wait_for(lambda i=i: in_flight() > i, 30, lambda i=i: f"loop {i} of {name}: no request in flight")

    def _loop(self, name: str, i: int) -> None:
        while not self.stopped.is_set():
            self.results.append(check_answer(self.url, i % 2 == 0, f"{name} request {i}: once upon", self.num_tokens))
            i += 1

    def stop(self) -> list[str | None]:
        self.stopped.set()
        for thread in self.threads:
            thread.join(120)
        return self.results


def wait_for(what: Callable[[], bool], timeout: float, describe: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.05)


def scaling(gw: RunningGateway) -> dict:
    return httpx.get(gw.base_url + "/gateway/status", timeout=5).json()["groups"]["tiny"]["autoscaling"]


def test_a_group_grows_under_a_burst_drains_back_without_failing_a_request_and_replaces_a_killed_one(
        tiny_model_dir, run_gateway, caplog):
    args = ["--model", tiny_model_dir, "--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2)]
    gw = run_gateway({"groups": {"tiny": {
        "backends": [{"local": args}],
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4, "look_back_period_s": 1,
                        "upscale_delay_s": 0.5, "downscale_delay_s": 3},
        "retries": 0,  # a request cut off by a replica stopped under it fails here, not retried elsewhere
        # Load in requests only: 4 steady loops then stay spread 2 and 2 over two replicas, so that the one drained
        # has requests in flight (KV usage in the load can put them all on one replica, leaving the other idle).
        "routing": {"kv_usage_weight": 0},
        "health": {"interval_s": 0.2, "metrics_interval_s": 0.2},
        # A replica stopped with requests in flight gets 0.2 s to finish them before it is killed: only the drain
        # can save them. Two replicas on a 2-core host (or a 1-core runner): the cores' cap is not under test here.
        "replicas": {"backoff_initial_s": 0.2, "startup_timeout_s": 120, "drain_timeout_s": 120,
                     "stop_timeout_s": 0.2, "cores_per_replica": 0.5},
    }}})
    url = gw.base_url + "/v1/completions"
    caplog.set_level(logging.INFO, logger="corral.gateway")
    gw.wait_available("tiny", 1)
    assert scaling(gw)["replicas"] == {"ready": 1, "starting": 0, "draining": 0}

    # A burst of 8 requests at a time on one replica (target 4 each): a second is started, and used once healthy.
    burst = Load(url, 8, "burst", NUM_TOKENS // 4)
    wait_for(lambda: scaling(gw)["replicas"]["ready"] == 2, 120, lambda: scaling(gw))
    assert gw.metric("corral_gateway_autoscale_events_total", group="tiny", direction="up") == 1

    # Then 4 at a time, one replica's worth, 2 on each: after downscale_delay_s one is drained, with requests in
    # flight. (Placed while both are idle: under a slow host's long requests, no later answer would even them out.)
    results = burst.stop()
    in_flight = lambda: sum(b["in_flight"] for b in gw.status("tiny"))  # noqa: E731
    wait_for(lambda: in_flight() == 0, 30, lambda: gw.status("tiny"))
    steady = Load(url, 4, "steady", 2 * NUM_TOKENS, in_flight)
    wait_for(lambda: len(gw.status("tiny")) == 1, 120, lambda: (scaling(gw), gw.status("tiny")))
    results += steady.stop()
    assert results and all(problem is None for problem in results), [p for p in results if p][:3]
    drained = [r.getMessage() for r in caplog.records if "drained" in r.getMessage()]
    assert len(drained) == 1 and "(0 requests were in flight)" not in drained[0], drained
    assert gw.metric("corral_gateway_autoscale_events_total", group="tiny", direction="down",
                     reason="ongoing_requests") == 1
    assert gw.metric("corral_gateway_replica_drain_seconds_count", group="tiny") == 1
    assert gw.metric("corral_gateway_autoscale_desired_replicas", group="tiny") == 1

    # Killed: its supervisor restarts it, and a request sent while none is up waits for it.
    (victim,) = gw.status("tiny")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: gw.status("tiny")[0]["url"] is None, 10, lambda: gw.status("tiny"))
    assert check_answer(url, stream=True, prompt="after the kill") is None
    (replaced,) = gw.status("tiny")
    assert replaced["name"] == victim["name"] and replaced["pid"] != victim["pid"] and replaced["restarts"] == 1
    assert scaling(gw)["desired"] == 1
    assert gw.metric("corral_gateway_replica_start_seconds_count", group="tiny") == 3
