"""The audit log on the request path, end to end: a real gateway in front of a real `corral serve` replica of the
tiny random-weight model. After a load of requests (completions and chat, streamed and not, two tenants, refusals)
`corral audit verify` passes and there is exactly one request record per request, each written before the client
had its last byte, naming its tenant, key, backend, status and the usage the client saw, with the SHA-256 of the
prompt and of the output the client got (the texts only for the tenant whose policy says so); key changes by the
admin API and by `corral keys` in another process are admin records. And kill -9 of the gateway process during a
load: after a restart the chain verifies and every request that got a complete answer has its record."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from corral.gateway.audit_chain import audit_files
from corral.gateway.audit_chain import verify as verify_chain
from corral.gateway.supervisor import free_port

from .conftest import sse_events, start_gateway, wait_healthy

AUDIT_KEY = "0123456789abcdef-gateway-audit-key"
ADMIN = "test-admin-key-0123456789"
PROMPT = "hello there"


@pytest.fixture(scope="module")
def replica(tiny_replica) -> str:
    return tiny_replica


def records(directory: Path, kind: str | None = None) -> list[dict]:
    found = []
    for path in audit_files(directory):
        for line in path.read_bytes().splitlines():
            record = json.loads(line)
            if kind is None or record["type"] == kind:
                found.append(record)
    return found


def verify(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", "audit", "verify", str(directory)],
                          env={**os.environ, "CORRAL_AUDIT_KEY": AUDIT_KEY}, capture_output=True, text=True,
                          timeout=120)


def sha256(value) -> str:
    data = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"),
                                                           ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def send(gw, key: str, request_id: str, chat: bool, stream: bool, usage: bool) -> dict:
    """One request; what its client saw: status, output text, usage (when it was sent)."""
    body = {"model": "tiny", "max_tokens": 6, "ignore_eos": True, "stream": stream}
    body |= {"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT}
    if usage:
        body["stream_options"] = {"include_usage": True}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
    seen = {"prompt": body.get("messages") or body.get("prompt"), "usage": None}
    if not stream:
        response = httpx.post(gw.base_url + path, json=body, headers=headers, timeout=60)
        seen["status"] = response.status_code
        if response.status_code == 200:
            answer = response.json()
            choice = answer["choices"][0]
            seen["output"] = choice["message"]["content"] if chat else choice["text"]
            seen["usage"] = answer["usage"]
        return seen
    with httpx.stream("POST", gw.base_url + path, json=body, headers=headers, timeout=60) as response:
        events = sse_events(list(response.iter_lines()))
    seen["status"], text = response.status_code, ""
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        for choice in chunk["choices"]:
            text += (choice["delta"].get("content") or "") if chat else choice["text"]
        seen["usage"] = chunk.get("usage") or seen["usage"]
    seen["output"] = text
    return seen


def test_a_load_leaves_one_verified_record_per_request_written_before_its_last_byte(replica, tmp_path):
    directory = tmp_path / "audit"
    store = tmp_path / "keys.sqlite"
    gw = start_gateway({
        "groups": {"tiny": {"backends": [{"url": replica, "name": "replica"}], "health": {"interval_s": 0.2}}},
        "auth": {"enabled": True, "store": str(store),
                 "tenants": {"acme": {"record_texts": True}, "beta": {}}},
        "audit": {"enabled": True, "directory": str(directory)},
    }, ADMIN, AUDIT_KEY.encode())
    try:
        gw.wait_available("tiny", 1)
        created = {}
        for tenant in ("acme", "beta"):
            response = httpx.post(gw.base_url + "/admin/keys", json={"tenant": tenant, "name": "load"},
                                  headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
            assert response.status_code == 201
            created[tenant] = response.json()
        # The admin records are written before the admin API answers.
        assert {r["target"] for r in records(directory, "admin")} == {k["key_id"] for k in created.values()}

        plan = [(f"load-{i}", ("acme", "beta")[i % 2], bool(i & 2), bool(i & 4), bool(i & 8)) for i in range(16)]

        def run(item):
            request_id, tenant, chat, stream, usage = item
            seen = send(gw, created[tenant]["key"], request_id, chat, stream, usage)
            # The client has its last byte: the record must be on disk already.
            assert request_id in {r["request_id"] for r in records(directory, "request")}, request_id
            return request_id, tenant, chat, stream, usage, seen

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, plan))
        bad_key = httpx.post(gw.base_url + "/v1/completions", json={"model": "tiny", "prompt": "x"},
                             headers={"authorization": "Bearer ck-000000000000-nope", "x-request-id": "load-401"},
                             timeout=10)
        unknown = httpx.post(gw.base_url + "/v1/completions", json={"model": "nope", "prompt": "x"},
                             headers={"authorization": f"Bearer {created['beta']['key']}", "x-request-id": "load-404"},
                             timeout=10)
        assert (bad_key.status_code, unknown.status_code) == (401, 404)
        revoke = subprocess.run([sys.executable, "-m", "corral.cli.main", "keys", "revoke", "--store", str(store),
                                 created["beta"]["key_id"]], capture_output=True, text=True, timeout=60)
        assert revoke.returncode == 0, revoke.stderr
        deadline = time.monotonic() + 5  # the gateway copies another process's key changes every second
        while not any(r["action"] == "key.revoke" for r in records(directory, "admin")):
            assert time.monotonic() < deadline, "the CLI's revocation never reached the audit log"
            time.sleep(0.1)
    finally:
        gw.stop()

    checked = verify(directory)
    assert checked.returncode == 0 and checked.stdout.startswith("ok: "), checked.stdout + checked.stderr
    requests = {r["request_id"]: r for r in records(directory, "request")}
    assert len(records(directory, "request")) == len(requests) == len(plan) + 2
    for request_id, tenant, chat, stream, usage, seen in results:
        record = requests[request_id]
        assert (record["tenant"], record["key_id"], record["status"], record["complete"]) == (
            tenant, created[tenant]["key_id"], 200, True)
        assert (record["model_group"], record["backend"], record["route"]) == ("tiny", "replica", "least_loaded")
        assert record["path"] == ("/v1/chat/completions" if chat else "/v1/completions")
        assert record["completion_tokens"] == 6 and record["prompt_tokens"] > 0 and record["latency_ms"] > 0
        if seen["usage"] is not None:
            assert (record["prompt_tokens"], record["completion_tokens"]) == (
                seen["usage"]["prompt_tokens"], seen["usage"]["completion_tokens"])
        assert (stream and not usage) == (seen["usage"] is None)  # the usage only where the client asked
        assert record["prompt_sha256"] == sha256(seen["prompt"])
        assert record["output_sha256"] == sha256(seen["output"])
        if tenant == "acme":
            assert (record["prompt"], record["output"]) == (seen["prompt"], seen["output"])
        else:
            assert "prompt" not in record and "output" not in record
    assert (requests["load-401"]["status"], requests["load-401"]["tenant"]) == (401, None)
    assert (requests["load-404"]["status"], requests["load-404"]["tenant"]) == (404, "beta")
    admin = records(directory, "admin")
    assert [(r["action"], r["actor"].split(":")[0]) for r in admin] == [
        ("key.create", "admin_api"), ("key.create", "admin_api"), ("key.revoke", "cli")]
    assert admin[0]["actor"] == "admin_api:127.0.0.1" and admin[0]["before"] is None
    assert admin[0]["after"]["tenant"] == "acme" and admin[0]["after"]["key_id"] == created["acme"]["key_id"]
    assert admin[2]["before"]["revoked_at"] is None and admin[2]["after"]["revoked_at"] is not None
    log_text = b"".join(path.read_bytes() for path in audit_files(directory))
    assert not any(key["key"].encode() in log_text for key in created.values())  # never a secret


def audited_gateway(replica: str, tmp_path: Path) -> tuple[list[str], Path, str]:
    """The command of a `corral gateway` over ``replica`` with audit on, its audit directory and base URL."""
    directory = tmp_path / "audit"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "groups": {"tiny": {"backends": [{"url": replica}], "health": {"interval_s": 0.2}}},
        "audit": {"enabled": True, "directory": str(directory)},
    }))
    port = free_port()
    command = [sys.executable, "-m", "corral.cli.main", "gateway", "--config", str(config), "--port", str(port),
               "--log-level", "warning"]
    return command, directory, f"http://127.0.0.1:{port}"


def test_corral_gateway_will_not_start_audited_without_its_key(replica, tmp_path):
    command, _, _ = audited_gateway(replica, tmp_path)
    env = {name: value for name, value in os.environ.items() if name != "CORRAL_AUDIT_KEY"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.splitlines() == [
        "corral gateway: error: audit: environment variable CORRAL_AUDIT_KEY (the audit HMAC key) is not set"]


def test_kill_9_during_load_loses_no_record_of_a_completed_answer(replica, tmp_path):
    command, directory, base_url = audited_gateway(replica, tmp_path)
    env = {**os.environ, "CORRAL_AUDIT_KEY": AUDIT_KEY}
    gateway = subprocess.Popen(command, env=env)
    completed: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        for i in range(1000):  # bounded; stops at the kill
            request_id, stream = f"w{worker}-{i}", i % 2 == 1
            body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, "stream": stream}
            try:
                if stream:
                    with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=30,
                                      headers={"x-request-id": request_id}) as response:
                        whole = sse_events(list(response.iter_lines()))[-1:] == ["[DONE]"]
                else:
                    response = httpx.post(base_url + "/v1/completions", json=body, timeout=30,
                                          headers={"x-request-id": request_id})
                    whole = response.status_code == 200 and response.json()["choices"][0]["text"] is not None
            except (httpx.HTTPError, ValueError):
                return  # the gateway is gone
            if whole:
                completed.append(request_id)
            if stop.is_set():
                return

    try:
        wait_healthy(base_url, gateway, timeout=60)
        while httpx.get(base_url + "/health", timeout=5).json()["groups"]["tiny"]["available"] < 1:
            time.sleep(0.1)
        workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while len(completed) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        gateway.send_signal(signal.SIGKILL)  # mid-load: requests in flight, records being written
        gateway.wait(timeout=30)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    assert len(completed) >= 40
    restarted = subprocess.Popen(command, env=env)  # continues the chain after the crash
    try:
        wait_healthy(base_url, restarted, timeout=60)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
    checked = verify_chain([directory], AUDIT_KEY.encode())
    assert checked.ok, checked.format()
    requests = {r["request_id"]: r for r in records(directory, "request")}
    missing = [request_id for request_id in completed if request_id not in requests]
    assert not missing, missing[:5]
    assert all(requests[i]["status"] == 200 and requests[i]["complete"] for i in completed)
    assert len(records(directory, "request")) == len(requests)  # no request recorded twice
