"""The offline measurement protocol shared by every system's runner (corral, llama.cpp, vLLM).

Standard library only: the peer runners import it inside their own venvs, where neither corral nor the
project's torch exists. A runner supplies one function, ``generate(prompts, max_tokens) -> output token
counts``, and ``run_job`` times it on the job the driver (bench/run.py) wrote:

    {
      "max_tokens": 128,
      "workloads": {"A": {"warmup": [[ids], ...], "runs": [[[ids], ...], ...]}, "B": {...}},
      "single": {"short": {"runs": [{"ttft": [ids], "decode": [ids]}, ...]}, "long": {...}}
    }

Every prompt is token ids, so all systems see the same tokens. The driver prefixes each run's prompts
with a distinct "Run N." salt, so no run is served from the prefix cache a previous one left behind.

Workloads: output tok/s = output tokens / wall time of one ``generate`` call over all prompts.
Single stream: TTFT = wall time of ``generate([ttft], 1)``; decode tok/s = (max_tokens - 1) /
(time of ``generate([decode], max_tokens)`` - TTFT), the two prompts being equally long and uncached.

A runner prints its result as one line ``BENCH_RESULT {json}`` on stdout (libraries print other lines).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "

GenerateFn = Callable[[Sequence[Sequence[int]], int], list[int]]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--job", required=True, help="job JSON written by bench/run.py")
    parser.add_argument("--model", required=True, help="model file (GGUF) or directory (HF)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra constructor argument for the system (repeatable)")
    return parser.parse_args()


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'none' -> None, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_kv(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def load_job(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def tree_peak_rss_mib(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over a process and its live descendants, in MiB.

    A sum of per-process peaks: an upper bound when the peaks did not coincide. vLLM runs its engine in
    a child process, so the parent's own peak alone would miss most of it."""
    seen: set[int] = set()
    stack = [pid]
    total_kib = 0
    while stack and len(seen) < 256:  # bounded walk
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        total_kib += _vm_hwm_kib(current)
        stack.extend(_children(current))
    if total_kib == 0 and pid == os.getpid():  # no /proc: fall back on getrusage (KiB on Linux)
        total_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return total_kib / 1024


def _timed(generate: GenerateFn, prompts: Sequence[Sequence[int]], max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    counts = generate(prompts, max_tokens)
    return time.perf_counter() - start, sum(counts)


def run_job(job: dict[str, Any], generate: GenerateFn, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``generate`` on every workload and single-stream item of ``job``; raw numbers per run."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    max_tokens = int(job["max_tokens"])
    result: dict[str, Any] = {"workloads": {}, "single": {}}

    for name, spec in job["workloads"].items():
        if spec.get("warmup"):
            _timed(generate, spec["warmup"], min(16, max_tokens))
        runs = []
        for prompts in spec["runs"]:
            elapsed, tokens = _timed(generate, prompts, max_tokens)
            runs.append({
                "seconds": elapsed, "output_tokens": tokens, "tok_s": tokens / elapsed,
                "expected_tokens": max_tokens * len(prompts), "prompt_tokens": sum(len(p) for p in prompts),
            })
            say(f"  workload {name}: {tokens} tokens in {elapsed:.1f} s = {tokens / elapsed:.1f} tok/s")
        result["workloads"][name] = runs

    for name, spec in job.get("ttft", {}).items():  # prefill alone: one token after a long prompt
        runs = []
        for prompt in spec["runs"]:
            ttft, _ = _timed(generate, [prompt], 1)
            runs.append({"ttft_s": ttft, "prompt_tokens": len(prompt)})
            say(f"  TTFT {name}: {ttft * 1000:.0f} ms")
        result.setdefault("ttft", {})[name] = runs

    for name, spec in job["single"].items():
        runs = []
        for pair in spec["runs"]:
            ttft, _ = _timed(generate, [pair["ttft"]], 1)
            total, tokens = _timed(generate, [pair["decode"]], max_tokens)
            decode = (tokens - 1) / max(total - ttft, 1e-9)
            runs.append({"ttft_s": ttft, "decode_tok_s": decode, "output_tokens": tokens,
                         "prompt_tokens": len(pair["ttft"])})
            say(f"  single {name}: TTFT {ttft * 1000:.0f} ms, decode {decode:.1f} tok/s")
        result["single"][name] = runs

    result["peak_rss_mib"] = tree_peak_rss_mib(os.getpid())
    return result


def emit(result: dict[str, Any]) -> None:
    """Print the one result line the driver looks for."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
