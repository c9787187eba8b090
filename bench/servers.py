"""Start, probe and stop the OpenAI-compatible servers that bench/run.py and bench/scaling.py compare.

Each server runs as a subprocess on a free 127.0.0.1 port with its output in a log file; start-up time
is measured from ``Popen`` until the health URL answers 200, and peak RSS is read from /proc (VmHWM,
summed over the server's process tree) before it is stopped. Not a script: imported by the drivers.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from common import tree_peak_rss_mib  # noqa: E402

SERVED_NAME = "m"
CONTEXT = 2048


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read().split()
    except OSError:
        return False


@dataclass
class ServerSpec:
    """How to start one system's server; ``{port}`` in ``cmd`` is filled in at start."""

    name: str
    cmd: list[str]
    health: str
    env: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)  # fields every benchmark request adds
    start_timeout_s: float = 300.0


def corral_spec(threads: int, extra_args: str = "", max_model_len: int = CONTEXT) -> ServerSpec:
    cmd = [sys.executable, "-m", "corral.cli.main", "serve", "--port", "{port}", "--served-model-name", SERVED_NAME,
           "--max-model-len", str(max_model_len), "--log-level", "warning", *shlex.split(extra_args)]
    return ServerSpec("corral", cmd, "/health", env={"OMP_NUM_THREADS": str(threads)})


def llamacpp_spec(python: str, gguf: str, threads: int, eos_ids: Sequence[int]) -> ServerSpec:
    """llama-cpp-python's server: greedy needs ``repeat_penalty`` 1 (its default is 1.1), EOS is banned
    through ``logit_bias`` (no ``ignore_eos``), ``logits_all`` (default on) costs ~20% of decode, and
    ``interrupt_requests`` (default on) cuts a running stream short whenever another request arrives
    (it serves one request at a time; the others wait on a lock)."""
    cmd = [python, "-m", "llama_cpp.server", "--model", gguf, "--port", "{port}", "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--n_ctx", str(CONTEXT), "--logits_all", "False",
           "--interrupt_requests", "False", "--model_alias", SERVED_NAME]
    extra = {"repeat_penalty": 1.0, "logit_bias": {str(i): -1e9 for i in eos_ids}}
    return ServerSpec("llama.cpp", cmd, "/v1/models", extra_body=extra)


def vllm_env(threads: int) -> dict[str, str]:
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}", "VLLM_CPU_KVCACHE_SPACE": "1"}


def vllm_spec(python: str, model_dir: str, threads: int) -> ServerSpec:
    dtype = "bfloat16" if cpu_has("avx512_bf16") else "float32"
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--port", "{port}",
           "--served-model-name", SERVED_NAME, "--dtype", dtype, "--max-model-len", str(CONTEXT), "--seed", "0"]
    return ServerSpec("vLLM", cmd, "/health", env=vllm_env(threads), start_timeout_s=600.0)


class Server:
    """A running server; use as a context manager so it is always stopped."""

    def __init__(self, spec: ServerSpec, log_path: str):
        self.spec = spec
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [part.replace("{port}", str(self.port)) for part in spec.cmd]
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **spec.env}, start_new_session=True)
        try:
            self._wait_healthy(spec.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - start

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} server exited with {self.proc.returncode}; "
                                   f"log: {self.log_path}\n{tail(self.log_path)}")
            try:
                if httpx.get(self.base_url + self.spec.health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} server not healthy after {timeout_s:.0f} s; log: {self.log_path}")

    def prompt_tokens(self, prompt: str) -> int | None:
        """How many tokens the server counts in ``prompt`` (to check every system sees the same)."""
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, **self.spec.extra_body}
        try:
            response = httpx.post(self.base_url + "/v1/completions", json=body, timeout=120)
            return int(response.json()["usage"]["prompt_tokens"])
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            return None

    def kv_slot_steps(self) -> tuple[float, float] | None:
        """corral's (allocated, empty) KV slot-step counters from /metrics; None for other servers."""
        try:
            text = httpx.get(self.base_url + "/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("corral:kv_cache_allocated_slot_steps_total", "corral:kv_cache_empty_slot_steps_total"):
                values[name] = float(value)
        if len(values) != 2:
            return None
        return values["corral:kv_cache_allocated_slot_steps_total"], values["corral:kv_cache_empty_slot_steps_total"]

    def peak_rss_mib(self) -> float:
        return tree_peak_rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:  # the whole session: vLLM's engine runs in a child process
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_busy_share(seconds: float = 2.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` while this process sleeps: others' load, 0..1."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def quiet_check(when: str) -> tuple[float | None, str | None]:
    """Measure other processes' CPU use; a warning when the machine is not quiet (ratios then mislead:
    llama.cpp's OpenMP threads, spinning, slow down by 10x or more when they lose a core)."""
    busy = cpu_busy_share()
    if busy is not None and busy > 0.15:
        return busy, (f"WARNING: {busy:.0%} of the CPUs were busy with other processes {when}; "
                      "these numbers are not comparable to a quiet run")
    return busy, None


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
