"""What the gateway's guardrails cost on the request path: two gateways over the same paced upstream
(bench/paced_upstream.py: no model, a fixed token schedule, so the difference is the gateway's alone), one
with every input and output check on and one with none, driven alternately with the same streaming
completions; TTFT p50/p99 and output throughput at each concurrency, and the ratio with/without.

The prompts are text of about 128 words with an e-mail address in each, so the PII check masks something on
every request; the answers are the upstream's " tok" words, checked as they stream. Leakage and the JSON check
need a system prompt or a response_format, which completions do not carry: they are configured but do not run.

    .venv/bin/python bench/guardrails_overhead.py [--repeats 3] [--concurrency 1 32] [--num-prompts 8 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gateway_procs import WORDS, Gateway, bench  # noqa: E402
from servers import Server, ServerSpec  # noqa: E402
from workloads import provenance  # noqa: E402

MODEL = "m"
ALL_CHECKS = {"checks": [
    {"type": "secrets", "action": "mask"},
    {"type": "pii", "action": "mask"},
    {"type": "injection", "action": "deny"},
    {"type": "leakage", "action": "mask"},
    {"type": "json_output", "action": "deny"},
]}


def prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(120)) + f" Write to user{i}.{seed}@example.com about it."
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--num-prompts", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    upstream_cmd = [sys.executable, os.path.join(HERE, "paced_upstream.py"), "--port", "{port}"]
    levels = []
    with tempfile.TemporaryDirectory() as log_dir, \
            Server(ServerSpec("paced upstream", upstream_cmd, "/health"), os.path.join(log_dir, "up.log")) as up:
        backend = {"url": up.base_url, "scrape_metrics": False}
        base = {"groups": {MODEL: {"backends": [backend]}}, "cache": {"enabled": False}}
        with Gateway(base, log_dir, "plain", 1) as plain, \
                Gateway({**base, "guardrails": ALL_CHECKS}, log_dir, "guarded", 1) as guarded:
            for gateway in (plain, guarded):
                bench(gateway.base_url, MODEL, prompts(2, 0), 8, 2, 0, args.timeout)
            for conc, num in zip(args.concurrency, args.num_prompts):
                runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
                for rep in range(args.repeats):
                    for name, gateway in (("without", plain), ("with", guarded)):
                        report = bench(gateway.base_url, MODEL, prompts(num, 10 * rep + conc), args.output_len,
                                       conc, rep, args.timeout)
                        if report.num_failed:
                            raise SystemExit(f"{name} c={conc}: {report.num_failed} requests failed")
                        runs[name].append({"ttft_p50_ms": report.ttft.median_ms, "ttft_p99_ms": report.ttft.p99_ms,
                                           "tok_s": report.output_throughput})
                        print(f"c={conc} rep {rep} {name:7}: TTFT p50 {report.ttft.median_ms:6.1f} ms, "
                              f"p99 {report.ttft.p99_ms:6.1f} ms, {report.output_throughput:6.1f} tok/s", flush=True)
                med = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
                levels.append({"concurrency": conc, "num_prompts": num, "runs": runs, "median": med})
                print(f"c={conc}: TTFT p50 added {med['with']['ttft_p50_ms'] - med['without']['ttft_p50_ms']:+.1f} ms, "
                      f"p99 added {med['with']['ttft_p99_ms'] - med['without']['ttft_p99_ms']:+.1f} ms, "
                      f"throughput with/without {med['with']['tok_s'] / med['without']['tok_s']:.2f}", flush=True)
    with open(os.path.join(HERE, "results", "guardrails_overhead.json"), "w") as f:
        json.dump({**provenance(), "policy": ALL_CHECKS, "levels": levels}, f, indent=1)


if __name__ == "__main__":
    main()
