"""A gateway running in this process (uvicorn on a free port, in a thread), started from a GatewayConfig and
stopped after the test or module, with helpers to read its /metrics and /gateway/status; and a real
``redis-server`` (Debian's package; .ci/run installs it) on a free 127.0.0.1 port, without persistence, started once
per test module and stopped after it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from corral.gateway.app import UVICORN_OPTIONS, Gateway, build_app
from corral.gateway.config import ConfigFile, GatewayConfig, parse_config
from corral.gateway.supervisor import free_port


@dataclass
class RunningGateway:
    base_url: str
    gateway: Gateway
    server: uvicorn.Server
    thread: threading.Thread
    admin_key: str | None = None  # sent to /gateway/status, which needs it when auth is enabled

    def status(self, group: str) -> list[dict]:
        headers = {"authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}
        return httpx.get(self.base_url + "/gateway/status", headers=headers,
                         timeout=5).json()["groups"][group]["backends"]

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(httpx.get(self.base_url + "/metrics", timeout=5).text, name, **labels)

    def wait_available(self, group: str, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            backends = self.status(group)
            if sum(b["available"] for b in backends) >= count:
                return backends
            time.sleep(0.1)
        raise AssertionError(f"group {group}: fewer than {count} backends available: {self.status(group)}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the gateway did not stop"


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_healthy(base_url: str, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Returns once ``base_url``/health answers; fails if ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(base_url + "/health", timeout=1)
            return
        except httpx.HTTPError:
            assert process is None or process.poll() is None, f"{base_url}: the process exited"
            assert time.monotonic() < deadline, f"{base_url} did not answer /health"
            time.sleep(0.05)


def start_gateway(config: GatewayConfig | dict, admin_key: str | None = None,
                  audit_key: bytes | None = None, config_file: ConfigFile | None = None) -> RunningGateway:
    if isinstance(config, dict):
        config = parse_config(config, "test")
    port = free_port()
    app = build_app(config, admin_key=admin_key, audit_key=audit_key, config_file=config_file)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return RunningGateway(base_url, app.state.gateway, server, thread, admin_key)
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("the gateway did not answer /health")


@pytest.fixture(scope="package")
def tiny_replica(tiny_model_dir) -> Iterator[str]:
    """The base URL of one `corral serve` of the tiny random-weight model (served as ``tiny``, 512-token context),
    shared by the modules that need any replica to answer (test_limits_gateway.py, test_audit_gateway.py):
    started at the first of them, stopped after the last test of tests/gateway/ (idle, it costs no CPU)."""
    from tests.conftest import ServeProcesses  # the module pytest loaded as tests/conftest.py

    processes = ServeProcesses()
    try:
        yield processes.start("--model", tiny_model_dir, "--served-model-name", "tiny", "--max-model-len", "512",
                              "--kv-cache-memory", str(32 * 1024**2))
    finally:
        processes.stop_all()


@pytest.fixture
def run_gateway() -> Iterator[Callable[[GatewayConfig | dict], RunningGateway]]:
    """``run_gateway(config)``: a RunningGateway, stopped after the test."""
    running: list[RunningGateway] = []

    def run(config: GatewayConfig | dict, admin_key: str | None = None,
            audit_key: bytes | None = None, config_file: ConfigFile | None = None) -> RunningGateway:
        running.append(start_gateway(config, admin_key, audit_key, config_file))
        return running[-1]

    yield run
    for gateway in running:
        gateway.stop()


def sse_events(lines: list[str]) -> list[str]:
    """The data payloads of an SSE stream's lines."""
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


REDIS_MISSING = "redis-server is not installed (Debian package redis-server; .ci/run installs it)"


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """A redis-server without persistence on 127.0.0.1:``port``, answering PING (or an AssertionError)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(REDIS_MISSING)
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    while not redis_ping(port):
        if server.poll() is not None:
            raise AssertionError(f"redis-server exited: {server.stderr.read() if server.stderr else ''}")
        if time.monotonic() > deadline:
            stop_redis(server)
            raise AssertionError("redis-server did not answer PING within 10 s")
        time.sleep(0.05)
    return server


def stop_redis(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a redis-server this module owns; skips where the binary is missing."""
    if shutil.which("redis-server") is None:
        pytest.skip(REDIS_MISSING)
    port = free_port()
    server = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(server)
