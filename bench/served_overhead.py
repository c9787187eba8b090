"""What the server path costs: `corral serve` at N streams against corral's own offline engine on the same
prompts (workload B of shared/MACHINE.md: 32 chat prompts, 128 greedy tokens each, EOS ignored), in
alternating rounds so that both sides see the same host drift; medians and the ratio of medians printed.

Each round runs the offline engine in its own process (bench/corral_offline.py), then the same prompts as
text through one `corral serve` (started once, warm) with the load generator (corral.bench.serve) in this
process. Raw results: bench/results/served_overhead.json (one stream: served_overhead_single.json). A salt per round keeps the prefix cache from carrying one round's KV into the next. Per round it
also reads the CPU seconds of the load generator and of each server thread (/proc), since on 2 cores the
load generator's and the event loop's CPU are taken from the engine's OpenMP team.

With ``--concurrency 1`` it measures the single-stream target instead: decode speed (tokens after the first
over the time after the first) of ``--single-prompts`` of the prompts one at a time, offline and served,
the medians per round.

    .venv/bin/python bench/served_overhead.py [--rounds 5] [--concurrency 32] [--threads 2] [--single-prompts 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import run_offline  # noqa: E402
from servers import Server, corral_spec, quiet_check  # noqa: E402
from workloads import provenance, workload_b  # noqa: E402

from corral.bench.serve import run_benchmark  # noqa: E402
from corral.loader.default_model import default_model_path  # noqa: E402
from corral.text.tokenizer import Tokenizer  # noqa: E402


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        seconds[tid] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def offline_round(texts: list[str], tokenizer: Tokenizer, args: argparse.Namespace, workdir: str) -> float:
    """Offline output tok/s of ``texts`` all at once, or with one stream the median decode tok/s of each alone."""
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    warmup = [tokenizer.encode("Warm-up. Say something about the sea.")]
    job = {"max_tokens": args.max_tokens, "eos_token_ids": sorted(tokenizer.eos_token_ids),
           "workloads": {"B": {"warmup": warmup, "runs": [prompts]}}, "single": {}}
    if args.concurrency == 1:  # each prompt's prefill timed on a twin (first token changed: no cache hit)
        job["workloads"] = {}
        job["single"] = {"B": {"runs": [{"ttft": [p[0] + 1, *p[1:]], "decode": p} for p in prompts]}}
    job_path = os.path.join(workdir, "job.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    cmd = [sys.executable, os.path.join(HERE, "corral_offline.py"), "--job", job_path, "--model", args.model,
           "--threads", str(args.threads)]
    result = run_offline("corral", cmd, {"OMP_NUM_THREADS": str(args.threads)},
                         os.path.join(workdir, "offline.log"), args.timeout)
    if result is None:
        raise SystemExit("the offline run failed")
    if args.concurrency == 1:
        return statistics.median(r["decode_tok_s"] for r in result["single"]["B"])
    return result["workloads"]["B"][0]["tok_s"]


def served_round(server: Server, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    threads_before = thread_cpu_s(server.proc.pid)
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    report = asyncio.run(run_benchmark(server.base_url, "m", texts, args.max_tokens,
                                       max_concurrency=args.concurrency, show_progress=False,
                                       timeout_s=args.timeout))
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    threads_after = thread_cpu_s(server.proc.pid)
    if report.num_failed or report.total_output_tokens != len(texts) * args.max_tokens:
        raise SystemExit(f"served round: {report.num_failed} failed, {report.total_output_tokens} tokens")
    spent = sorted((threads_after[t] - threads_before.get(t, 0.0) for t in threads_after), reverse=True)
    return {
        # one stream: decode speed as offline measures it (report.tpot: time after the first token per token)
        "tok_s": 1000 / report.tpot.median_ms if args.concurrency == 1 else report.output_throughput,
        "client_cpu_s": (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime),
        "server_threads_cpu_s": [round(s, 2) for s in spent if s >= 0.01],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--single-prompts", type=int, default=6, help="with --concurrency 1: prompts a round")
    args = parser.parse_args()

    tokenizer = Tokenizer.from_gguf(args.model)
    chats = [tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in workload_b(32)]
    if args.concurrency == 1:
        chats = chats[: args.single_prompts]
    host = provenance()["host"]
    print(f"host: {host['cpu']} ({', '.join(host['simd_flags'])}), {args.threads} threads", flush=True)
    rounds = []
    with tempfile.TemporaryDirectory() as workdir, Server(corral_spec(args.threads),
                                                          os.path.join(workdir, "serve.log")) as server:
        asyncio.run(run_benchmark(server.base_url, "m", ["Warm-up. Say something about the sea."] * 2, 16,
                                  max_concurrency=2, show_progress=False))
        for r in range(1, args.rounds + 1):
            texts = [f"Run {r}.\n{chat}" for chat in chats]
            busy, warning = quiet_check(f"before round {r}")
            if warning:
                print(warning, flush=True)
            offline = offline_round(texts, tokenizer, args, workdir)
            time.sleep(1.0)
            served = served_round(server, texts, args)
            rounds.append({"offline_tok_s": offline, **served})
            print(f"round {r}: offline {offline:.1f} tok/s, served {served['tok_s']:.1f} tok/s "
                  f"({served['tok_s'] / offline:.2f}x); load generator {served['client_cpu_s']:.2f} s CPU, "
                  f"server threads {served['server_threads_cpu_s']} s", flush=True)
    offline_median = statistics.median(r["offline_tok_s"] for r in rounds)
    served_median = statistics.median(r["tok_s"] for r in rounds)
    per_round = statistics.median(r["tok_s"] / r["offline_tok_s"] for r in rounds)
    summary = {"offline_tok_s": offline_median, "served_tok_s": served_median,
               "served_over_offline": served_median / offline_median, "median_round_ratio": per_round}
    out = os.path.join(HERE, "results", "served_overhead_single.json" if args.concurrency == 1 else "served_overhead.json")
    with open(out, "w") as f:
        json.dump({**provenance(), "concurrency": args.concurrency, "threads": args.threads, "rounds": rounds,
                   "median": summary}, f, indent=1)
    print(f"median of {args.rounds} rounds, {args.concurrency} streams: offline {offline_median:.1f} tok/s, "
          f"served {served_median:.1f} tok/s: {served_median / offline_median:.2f}x "
          f"(median of per-round ratios {per_round:.2f}x)")


if __name__ == "__main__":
    main()
