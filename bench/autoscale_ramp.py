"""The autoscaling ramp (docs/autoscaling.md): a load ramp against `corral gateway` over local `corral serve`
replicas of the default model, then idle, in three configurations: autoscaling from 1 to --max-replicas, and
autoscaling off at 1 replica and at --max-replicas. Every second it records the group's replicas (ready,
starting, draining, desired) and the requests waiting (at the replicas and at the gateway); every request's
TTFT and whether it completed. Printed: TTFT p50/p99 and output tok/s per step of the ramp, the time from the
first step that asks for more replicas to the new one serving, and the time from the start of the idle period
to the group being back at one replica.

Each replica runs --replica-threads OpenMP threads (default 1: on a 2-core machine two replicas then take a
core each, which is what the resource guard allows with `cores_per_replica: 1`).

    .venv/bin/python bench/autoscale_ramp.py [--max-replicas 2] [--steps 1,4,8,16] [--step-s 40] [--idle-s 60]

Raw results: bench/results/autoscale_ramp.json; with matplotlib (`make bench-deps`) a plot,
docs/autoscale_ramp.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gateway_procs import Gateway  # noqa: E402
from workloads import provenance  # noqa: E402

from corral.loader.default_model import default_model_path  # noqa: E402

GROUP = "smol"
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. Describe the sea, "
          "the weather and the keeper's daily routine in detail before the discovery. ")


@dataclass
class Sample:
    t: float
    concurrency: int
    ready: int
    starting: int
    draining: int
    desired: int | None
    waiting: float  # at the replicas (scraped) plus at the gateway (a request waiting for a replica to start)


@dataclass
class Completed:
    start: float
    ttft: float | None
    tokens: int
    ok: bool


def group_config(model: str, replicas: int, autoscale_to: int | None) -> dict:
    backend = {"local": ["--model", model, "--max-model-len", "1024"]}
    group: dict = {"backends": [backend] * (1 if autoscale_to else replicas), "retries": 0,
                   "health": {"interval_s": 0.5, "metrics_interval_s": 0.5},
                   "replicas": {"startup_timeout_s": 300, "drain_timeout_s": 120, "cores_per_replica": 1}}
    if autoscale_to:
        group["autoscaling"] = {"min_replicas": 1, "max_replicas": autoscale_to, "target_ongoing_requests": 4,
                                "look_back_period_s": 5, "upscale_delay_s": 5, "downscale_delay_s": 20}
    return {"groups": {GROUP: group}}


def sample(status: dict, t: float, concurrency: int) -> Sample:
    group = status["groups"][GROUP]
    backends = group["backends"]
    scaling = group.get("autoscaling")
    if scaling is not None:
        counts = scaling["replicas"]
        ready, starting, draining = counts["ready"], counts["starting"], counts["draining"]
        desired, at_gateway = scaling["desired"], scaling["waiting_at_gateway"]
    else:
        ready = sum(b["available"] for b in backends)
        starting, draining, desired, at_gateway = len(backends) - ready, 0, None, 0
    waiting = sum(b["waiting"] for b in backends) + at_gateway
    return Sample(round(t, 2), concurrency, ready, starting, draining, desired, waiting)


async def one_request(session: aiohttp.ClientSession, url: str, max_tokens: int, t0: float) -> Completed:
    body = {"model": GROUP, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.monotonic()
    ttft, tokens, finished = None, 0, False
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return Completed(start - t0, None, 0, False)
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):  # the last event: the token count (a chunk may carry no text, or several)
                    tokens = event["usage"]["completion_tokens"]
                for choice in event["choices"]:
                    if choice.get("text") and ttft is None:
                        ttft = time.monotonic() - start
                    finished = finished or choice.get("finish_reason") is not None
    except aiohttp.ClientError:
        return Completed(start - t0, ttft, tokens, False)
    return Completed(start - t0, ttft, tokens, finished and tokens == max_tokens)


async def ramp(gateway: Gateway, steps: list[int], step_s: float, idle_s: float,
               max_tokens: int) -> tuple[list[Sample], list[Completed]]:
    url = gateway.base_url + "/v1/completions"
    samples: list[Sample] = []
    completed: list[Completed] = []
    level = 0
    t0 = time.monotonic()

    async def worker(index: int, session: aiohttp.ClientSession) -> None:
        while True:
            if index >= level:
                await asyncio.sleep(0.1)
                continue
            completed.append(await one_request(session, url, max_tokens, t0))

    async def sampler(session: aiohttp.ClientSession) -> None:
        while True:
            async with session.get(gateway.base_url + "/gateway/status") as response:
                samples.append(sample(await response.json(), time.monotonic() - t0, level))
            await asyncio.sleep(1.0)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(worker(i, session)) for i in range(max(steps))]
        tasks.append(asyncio.create_task(sampler(session)))
        for concurrency in steps:
            level = concurrency
            print(f"  {time.monotonic() - t0:6.1f} s: {concurrency} streams", flush=True)
            await asyncio.sleep(step_s)
        level = 0
        print(f"  {time.monotonic() - t0:6.1f} s: idle", flush=True)
        await asyncio.sleep(idle_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples, completed


def summarize(samples: list[Sample], completed: list[Completed], steps: list[int], step_s: float) -> dict:
    per_step = []
    for index, concurrency in enumerate(steps):
        begin, end = index * step_s, (index + 1) * step_s
        done = [c for c in completed if begin <= c.start < end]
        ttfts = sorted(c.ttft for c in done if c.ttft is not None)
        per_step.append({
            "concurrency": concurrency, "requests": len(done), "failed": sum(not c.ok for c in done),
            "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None,
            "output_tok_s": sum(c.tokens for c in done) / step_s,
        })
    idle_start = len(steps) * step_s
    grew = next((s.t for s in samples if s.ready > 1), None)
    asked = next((s.t for s in samples if (s.desired or 0) > 1), None)
    back = next((s.t for s in samples if s.t >= idle_start and s.ready + s.starting == 1 and s.draining == 0), None)
    return {"per_step": per_step, "failed": sum(not c.ok for c in completed),
            "scale_up_s": None if grew is None or asked is None else round(grew - asked, 1),
            "first_ask_for_more_s": asked, "second_replica_serving_s": grew,
            "back_to_one_after_idle_s": None if back is None else round(back - idle_start, 1),
            "max_ready": max((s.ready for s in samples), default=0)}


def plot(results: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (replicas, queue, ttft) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name, run in results["runs"].items():
        samples = run["samples"]
        t = [s["t"] for s in samples]
        replicas.step(t, [s["ready"] for s in samples], where="post", label=f"{name}: ready")
        queue.plot(t, [s["waiting"] for s in samples], label=name)
        points = [(c["start"], c["ttft"]) for c in run["requests"] if c["ttft"] is not None]
        ttft.scatter([p[0] for p in points], [p[1] for p in points], s=4, label=name)
    first = next(iter(results["runs"].values()))["samples"]
    replicas.step([s["t"] for s in first], [s["concurrency"] for s in first], where="post", color="grey",
                  linestyle=":", label="concurrent streams")
    replicas.set_ylabel("replicas / streams")
    queue.set_ylabel("requests waiting")
    ttft.set_ylabel("TTFT (s)")
    ttft.set_xlabel("seconds since the ramp began")
    for axes in (replicas, queue, ttft):
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
    figure.suptitle(f"corral gateway, autoscaling ramp ({results['host']['cpu']}, {results['date'][:10]})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--steps", default="1,4,8,16", help="concurrent streams, one step after another")
    parser.add_argument("--step-s", type=float, default=40.0)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--replica-threads", type=int, default=1)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--out", default=os.path.join(HERE, "results", "autoscale_ramp.json"))
    parser.add_argument("--plot", default=os.path.join(HERE, "..", "docs", "autoscale_ramp.png"))
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    configs = {f"autoscale 1-{args.max_replicas}": (1, args.max_replicas), "fixed 1": (1, None),
               f"fixed {args.max_replicas}": (args.max_replicas, None)}
    results: dict = {**provenance(), "command": sys.argv, "python": platform.python_version(),
                     "settings": {**vars(args), "steps": steps}, "runs": {}}
    with tempfile.TemporaryDirectory() as log_dir:
        for name, (replicas, autoscale_to) in configs.items():
            print(f"{name}:", flush=True)
            config = group_config(args.model, replicas, autoscale_to)
            with Gateway(config, log_dir, name.replace(" ", "_"), args.replica_threads) as gateway:
                samples, completed = asyncio.run(ramp(gateway, steps, args.step_s, args.idle_s, args.max_tokens))
            summary = summarize(samples, completed, steps, args.step_s)
            results["runs"][name] = {"summary": summary, "samples": [asdict(s) for s in samples],
                                     "requests": [asdict(c) for c in completed]}
            for step in summary["per_step"]:
                p50, p99 = step["ttft_p50_s"], step["ttft_p99_s"]
                print(f"  {step['concurrency']:>3} streams: TTFT p50 {p50 if p50 is None else round(p50, 3)} s, "
                      f"p99 {p99 if p99 is None else round(p99, 3)} s, {step['output_tok_s']:.1f} tok/s, "
                      f"{step['failed']} failed of {step['requests']}")
            print(f"  scale-up {summary['scale_up_s']} s after the first ask; back to one replica "
                  f"{summary['back_to_one_after_idle_s']} s into the idle period; {summary['failed']} failed")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}" + (f" and {args.plot}" if plot(results, args.plot) else " (no matplotlib: no plot)"))


if __name__ == "__main__":
    main()
