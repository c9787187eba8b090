"""Local replicas: each a ``corral serve`` subprocess on a free 127.0.0.1 port, brought into routing once its
``/health`` answers (how long that took is measured), restarted with exponential backoff when it exits, stopped (terminate, then kill) when
the gateway shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time

import httpx

from corral.gateway.backends import Backend, Group, check_health

logger = logging.getLogger("corral.gateway")

_POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: the replica gets SIGTERM if the gateway dies without stopping it (a SIGKILL, a crash).
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ReplicaSupervisor:
    """Keeps one local backend running: start, wait for health, watch, restart after a backoff that doubles
    from ``backoff_initial_s`` to ``backoff_max_s`` (reset after a run longer than ``backoff_max_s``)."""

    def __init__(self, group: Group, backend: Backend, client: httpx.AsyncClient, log_level: str = "warning"):
        assert backend.config.local is not None
        self.group = group
        self.backend = backend
        self.client = client
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        self.task: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "corral.cli.main", "serve", *self.backend.config.local,
                "--host", "127.0.0.1", "--port", str(port), "--served-model-name", self.served_name,
                "--log-level", self.log_level]

    @property
    def served_name(self) -> str:
        return self.backend.config.model or self.group.name

    async def _run(self) -> None:
        config = self.group.config.replicas
        num_failures = 0
        while not self._stopping:
            started = time.monotonic()
            if await self._start_once():
                await self._wait_exit()
            self.group.mark_down(self.backend)
            if self._stopping:
                break
            if time.monotonic() - started > config.backoff_max_s:
                num_failures = 0
            delay = min(config.backoff_initial_s * 2**num_failures, config.backoff_max_s)
            num_failures += 1
            code = self.process.poll() if self.process else None
            logger.warning("replica %s exited (code %s); restarting in %.1f s", self.backend.name, code, delay)
            await asyncio.sleep(delay)
            self.backend.restarts += 1
            self.group.metrics.restarts.labels(group=self.group.name, backend=self.backend.name).inc()

    async def _start_once(self) -> bool:
        """Starts the process and waits for its /health; False if it exits or times out first."""
        port = free_port()
        began = time.monotonic()
        # A session of its own: a Ctrl-C (or a signal to the gateway's process group) reaches the gateway alone,
        # which stops its replicas in order; a replica killed first would be seen dying and restarted.
        self.process = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.backend.pid = self.process.pid
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.group.config.replicas.startup_timeout_s
        while time.monotonic() < deadline and not self._stopping:
            if self.process.poll() is not None:
                return False
            if await check_health(self.client, url, self.group.config.health.timeout_s):
                self.backend.url, self.backend.healthy = url, True
                self.backend.consecutive_failures, self.backend.ejected_until = 0, 0.0
                self.backend.start_s = time.monotonic() - began
                self.group.metrics.replica_start.labels(group=self.group.name).observe(self.backend.start_s)
                logger.info("replica %s is up at %s (pid %d), started in %.1f s", self.backend.name, url,
                            self.process.pid, self.backend.start_s)
                return True
            await asyncio.sleep(0.25)
        if not self._stopping:
            logger.warning("replica %s did not become healthy in time; killing it", self.backend.name)
        await self._terminate()
        return False

    async def _wait_exit(self) -> None:
        while self.process is not None and self.process.poll() is None and not self._stopping:
            await asyncio.sleep(_POLL_S)

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, self.group.config.replicas.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def stop(self) -> None:
        self._stopping = True
        await self._terminate()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
