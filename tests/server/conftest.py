"""A live `corral serve` app on a free 127.0.0.1 port, started and stopped by the fixture."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from corral.runtime import EngineArgs, build_engine
from corral.server.app import UVICORN_OPTIONS, build_app
from corral.server.async_engine import AsyncEngine
from corral.server.metrics import EngineMetrics

MODEL_NAME = "smollm2"
API_KEY = "test-key"
# The default int8 path in batch-invariant mode: tests here compare streamed text with the offline engine
# token for token, which int8 guarantees only when attention is computed per token (see tests/test_llm.py).
ENGINE_ARGS = EngineArgs(
    dtype="float32", max_model_len=1024, kv_cache_memory=64 * 1024**2, max_num_seqs=64, batch_invariant=True
)


@dataclass
class LiveServer:
    base_url: str
    engine: AsyncEngine

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the engine has no request and every KV block is free (abort is asynchronous)."""
        core = self.engine.engine.core
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kv = core.kv_manager
            if not core.has_unfinished_requests() and kv.num_free_blocks == kv.num_blocks:
                return
            time.sleep(0.05)
        raise AssertionError("engine did not become idle")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def server():
    metrics = EngineMetrics()
    engine = AsyncEngine(build_engine(ENGINE_ARGS), observer=metrics)
    app = build_app(engine, MODEL_NAME, api_key=API_KEY, max_tokens_cap=512, metrics=metrics)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **UVICORN_OPTIONS))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError("server did not become healthy")
    yield LiveServer(base_url, engine)
    uv.should_exit = True
    thread.join(timeout=15)
    engine.shutdown()
