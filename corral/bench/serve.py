"""Load generator for any OpenAI-compatible server: streams completions at a request rate or a fixed
concurrency and reports TTFT, TPOT, ITL, throughput. Talks HTTP only (no engine imports)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from rich.progress import Progress

from corral.bench.stats import Summary


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    latency_s: float = 0.0
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class BenchmarkReport:
    num_requests: int
    num_failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_output_tokens: int
    ttft: Summary
    tpot: Summary
    itl: Summary
    e2e: Summary

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"{'Successful requests:':<34}{self.num_requests - self.num_failed}",
            f"{'Failed requests:':<34}{self.num_failed}",
            f"{'Benchmark duration (s):':<34}{self.duration_s:.2f}",
            f"{'Total generated tokens:':<34}{self.total_output_tokens}",
            f"{'Request throughput (req/s):':<34}{self.request_throughput:.2f}",
            f"{'Output token throughput (tok/s):':<34}{self.output_throughput:.2f}",
        ]
        for name, summary in [("TTFT", self.ttft), ("TPOT", self.tpot), ("ITL", self.itl), ("E2E", self.e2e)]:
            lines.append(
                f"{name + ' (ms) mean/median/p90/p99:':<34}{summary.mean_ms:.1f} / {summary.median_ms:.1f} / "
                f"{summary.p90_ms:.1f} / {summary.p99_ms:.1f}"
            )
        return "\n".join(lines)


async def _one_request(
    client: aiohttp.ClientSession, url: str, model: str, prompt: str | list[int], output_len: int, headers: dict,
    extra_body: Mapping[str, Any] | None = None,
) -> RequestResult:
    body = {
        "model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0.0, "stream": True,
        "ignore_eos": True, "stream_options": {"include_usage": True},
        **(extra_body or {}),
    }
    start = time.perf_counter()
    result = RequestResult(ok=False)
    last = start
    usage_tokens = None
    try:
        async with client.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return result
            async for line in response.content:  # one SSE line at a time
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                choices = chunk.get("choices") or []
                if not choices or not choices[0].get("text"):
                    continue
                now = time.perf_counter()
                if result.output_tokens == 0:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append(now - last)
                last = now
                result.output_tokens += 1
        result.latency_s = time.perf_counter() - start
        if usage_tokens is not None:
            result.output_tokens = usage_tokens  # a chunk may carry several tokens
        result.ok = result.output_tokens > 0
        if not result.ok:
            result.error = "no tokens received"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: bad JSON, or a line over 64 KiB
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run_benchmark(
    base_url: str,
    model: str,
    prompts: Sequence[str | list[int]],
    output_len: int,
    request_rate: float = float("inf"),
    max_concurrency: int | None = None,
    api_key: str | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
    show_progress: bool = True,
    extra_body: Mapping[str, Any] | None = None,
) -> BenchmarkReport:
    """Send every prompt once (Poisson arrivals at ``request_rate`` req/s, at most ``max_concurrency``
    in flight) and summarise. Bounded: each request times out after ``timeout_s``. ``extra_body`` adds
    server-specific fields to every request (e.g. llama.cpp's ``repeat_penalty`` and ``logit_bias``)."""
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(prompts) or 1)
    # aiohttp, not httpx: on 2 cores the load generator's CPU is taken from the server it measures, and
    # httpx spends about 3x aiohttp's CPU per streamed request (docs/performance.md, "The served path").
    connector = aiohttp.TCPConnector(limit=max_concurrency or len(prompts) or 1)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("Requests", total=len(prompts))

            async def limited(prompt: str | list[int]) -> RequestResult:
                async with limit:
                    result = await _one_request(client, url, model, prompt, output_len, headers, extra_body)
                progress.advance(task)
                return result

            start = time.perf_counter()
            tasks = []
            for prompt in prompts:
                tasks.append(asyncio.create_task(limited(prompt)))
                if request_rate != float("inf"):
                    await asyncio.sleep(rng.expovariate(request_rate))
            results = await asyncio.gather(*tasks)
            duration = time.perf_counter() - start
    return summarize(results, duration)


def summarize(results: Sequence[RequestResult], duration_s: float) -> BenchmarkReport:
    ok = [r for r in results if r.ok]
    total_tokens = sum(r.output_tokens for r in ok)
    tpots = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return BenchmarkReport(
        num_requests=len(results),
        num_failed=len(results) - len(ok),
        duration_s=duration_s,
        request_throughput=len(ok) / duration_s if duration_s else 0.0,
        output_throughput=total_tokens / duration_s if duration_s else 0.0,
        total_output_tokens=total_tokens,
        ttft=Summary.of([r.ttft_s for r in ok]),
        tpot=Summary.of(tpots),
        itl=Summary.of([t for r in ok for t in r.itl_s]),
        e2e=Summary.of([r.latency_s for r in ok]),
    )
