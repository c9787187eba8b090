"""For bench/gateway_bench.py: a `corral gateway` process on a generated config, Prometheus scraping, the workloads
(random-token prompts, long shared system prompts) and a markdown table. Not a script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
from servers import Server, ServerSpec, tail

from corral.bench.serve import BenchmarkReport, run_benchmark


class Gateway:
    """`corral gateway --config` on a free port (its local replicas' stderr goes to the same log), healthy once
    every backend of every group is; use as a context manager so it and its replicas are always stopped."""

    def __init__(self, config: dict[str, Any], log_dir: str, name: str, replica_threads: int,
                 start_timeout_s: float = 600.0):
        self.config_path = os.path.join(log_dir, f"{name}.yaml")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML
        cmd = [sys.executable, "-m", "corral.cli.main", "gateway", "--config", self.config_path,
               "--port", "{port}", "--log-level", "warning"]
        # Local replicas inherit the gateway's environment: OMP_NUM_THREADS is theirs.
        spec = ServerSpec(f"gateway {name}", cmd, "/health", env={"OMP_NUM_THREADS": str(replica_threads)},
                          start_timeout_s=start_timeout_s)
        self.server = Server(spec, os.path.join(log_dir, f"{name}.log"))
        self.base_url, self.log_path = self.server.base_url, self.server.log_path
        try:
            self._wait_backends(start_timeout_s)
        except BaseException:
            self.server.stop()
            raise

    def status(self) -> dict[str, Any]:
        return httpx.get(self.base_url + "/gateway/status", timeout=10).json()

    def _wait_backends(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.server.proc.returncode}; log: {self.log_path}\n"
                                   f"{tail(self.log_path)}")
            try:
                groups = self.status()["groups"]
            except httpx.HTTPError:
                groups = {"": {"backends": [{"available": False}]}}
            if all(b["available"] for g in groups.values() for b in g["backends"]):
                self.startup_s = self.server.startup_s + timeout_s - (deadline - time.monotonic())
                return
            time.sleep(0.5)
        raise RuntimeError(f"gateway backends not healthy after {timeout_s:.0f} s; log: {self.log_path}\n"
                           f"{tail(self.log_path)}")

    def backend_urls(self, group: str) -> list[str]:
        return [b["url"] for b in self.status()["groups"][group]["backends"]]

    def stop(self) -> None:
        """SIGTERM to the gateway alone, so it stops its replicas itself (a signal to the whole process group
        reaches the replicas first and the gateway restarts them); then the group, for anything left."""
        proc = self.server.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)  # stragglers share the gateway's session
        self.server.stop()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as ``{"name{labels}": value}`` (no comments)."""
    values = {}
    for line in httpx.get(url.rstrip("/") + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                pass
    return values


def total(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's series whose labels include ``labels``."""
    out = 0.0
    for key, value in values.items():
        metric, _, rest = key.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            out += value
    return out


def series(values: dict[str, float], name: str) -> dict[str, float]:
    return {key.partition("{")[2].rstrip("}"): v for key, v in values.items() if key.partition("{")[0] == name}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def bench(base_url: str, model: str, prompts: Sequence[str | list[int]], output_len: int, concurrency: int,
          seed: int, limit_s: float) -> BenchmarkReport:
    """One bounded run_benchmark; the whole run is cut at ``limit_s`` (TimeoutError)."""
    async def bounded() -> BenchmarkReport:
        return await asyncio.wait_for(
            run_benchmark(base_url, model, prompts, output_len, max_concurrency=concurrency, seed=seed,
                          timeout_s=limit_s, show_progress=False), timeout=limit_s)
    return asyncio.run(bounded())


# Words for the system prompts: deterministic text, one seeded stream per prompt.
WORDS = ("river mountain system careful measure honest report network signal garden winter summer engine "
         "library window theory market harbor castle forest bridge station letter island silver copper "
         "question answer method record number family village kitchen season battery circuit planet orbit "
         "history science teacher student doctor patient process result design pattern weather climate "
         "ocean desert valley canyon meadow thunder lantern compass anchor harvest festival language").split()


def system_prompts(count: int, min_tokens: int, count_tokens: Any, seed: int = 0) -> list[str]:
    """``count`` distinct system prompts of at least ``min_tokens`` tokens each, different from their first
    character on (``Assistant A ...``, ``Briefing B ...`` would share nothing: each starts with its own letter)."""
    prompts = []
    for i in range(count):
        rng = random.Random(seed * 1000 + i)
        letter = chr(ord("A") + i % 26)
        words = [f"{letter}{i // 26 or ''}-instructions:", "You", "are", "assistant", f"{letter}{i}."]
        text = " ".join(words)
        while count_tokens(text) < min_tokens:
            words.extend(rng.choice(WORDS) for _ in range(50))
            text = " ".join(words)
        prompts.append(text)
    return prompts


def shared_prefix_requests(systems: Sequence[str], num_requests: int, seed: int) -> list[str]:
    """Requests spread evenly over the system prompts, each with a short distinct user turn, shuffled."""
    prompts = [f"{systems[k % len(systems)]}\n\nUser: question {k}: say something about item {k * 7 % 101}.\n"
               "Assistant:" for k in range(num_requests)]
    random.Random(seed).shuffle(prompts)
    return prompts


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
