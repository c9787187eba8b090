"""The gateway's benchmarks: its relay overhead, its routing policies' prefix-cache hit rate, and fallback.

Four parts (`--part overhead|relay|routing|degrade|all`), each driving streaming /v1/completions with
corral.bench.serve (greedy, EOS ignored):
  - overhead: one `corral serve` replica, measured straight and through a gateway whose one group's one
    backend is that replica (`url:`, response cache off), alternating direct, gateway, ... (--repeats); at
    1 stream (8 prompts) and 32 streams (64 prompts), random 128-token prompts, 128 output tokens, a fresh
    seed per run (no prefix-cache hits). Targets: TTFT p50 added <= 5 ms, output tok/s gateway/direct >= 0.95.
  - relay: the same comparison with bench/paced_upstream.py in place of the replica (first token after 50 ms,
    then one every 30 ms, no engine): the gateway's own added TTFT and time per token, without the engine's
    run-to-run noise (a 32-stream TTFT through an engine varies by tens of ms between identical runs).
  - routing: a gateway over 2 local replicas, a fresh one per policy (prefix_aware, round_robin,
    least_loaded) so the replicas' prefix caches start empty; 16 system prompts of >= 500 tokens shared by 192
    requests with short distinct user turns (prompt = system + user text: the load generator sends
    completions), shuffled, 8 concurrent, 32 output tokens. Each replica's KV pool is 80 MiB (about 6,800
    tokens: room for half the system prompts beside the running requests, not all 16), as in production where
    the distinct prefixes outgrow one replica's cache; with 8 prompts and the default 512 MiB pool every
    policy ends with every prompt cached on both replicas, and the policies tie. Prefix-cache hit rate = sum over the replicas
    of corral:prefix_cache_hits_total / corral:prefix_cache_queries_total (prompt tokens), delta over the run.
  - degrade: groups `big` (one local replica, --max-num-seqs 4) and `small` (one local replica of the same
    model); a burst of 48 requests at once (64-token random prompts, 64 output tokens) at `big`, (a) with
    `fallbacks: [small]` and `overload: 4`, (b) without fallbacks (the burst queues on big). The share
    answered by `small` is the delta of corral_gateway_fallbacks_total.
Prints a markdown table per part and writes bench/results/gateway.json (with --quick, a smoke run of a few
requests: bench/results/logs/gateway_quick.json). Process logs go to a temp dir. `make bench-gateway` runs it:

    .venv/bin/python bench/gateway_bench.py [--part all] [--repeats 3] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gateway_procs import (  # noqa: E402
    Gateway,
    bench,
    delta,
    render,
    scrape,
    series,
    shared_prefix_requests,
    system_prompts,
    total,
)
from servers import CONTEXT, SERVED_NAME, Server, ServerSpec, corral_spec, quiet_check, tail  # noqa: E402
from workloads import provenance  # noqa: E402

from corral.bench.datasets import random_token_prompts  # noqa: E402
from corral.loader.default_model import default_model_path  # noqa: E402
from corral.text.tokenizer import Tokenizer  # noqa: E402

PARTS = ("overhead", "relay", "routing", "degrade")
POLICIES = ("prefix_aware", "round_robin", "least_loaded")
SERVE_ARGS = ["--max-model-len", str(CONTEXT)]


def summary(report: Any) -> dict[str, Any]:
    d = report.to_dict()
    return {"num_requests": d["num_requests"], "num_failed": d["num_failed"], "duration_s": d["duration_s"],
            "output_throughput": d["output_throughput"], "ttft": d["ttft"], "tpot": d["tpot"], "e2e": d["e2e"]}


def failed_tail(what: str, log_path: str) -> None:
    print(f"{what} failed; log {log_path}:\n{tail(log_path)}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- overhead


def paced_spec(args: argparse.Namespace) -> ServerSpec:
    cmd = [sys.executable, os.path.join(HERE, "paced_upstream.py"), "--port", "{port}",
           "--ttft-ms", str(args.paced_ttft_ms), "--tpot-ms", str(args.paced_tpot_ms)]
    return ServerSpec("paced upstream", cmd, "/health")


def part_overhead(args: argparse.Namespace, vocab: int, log_dir: str, paced: bool = False) -> dict[str, Any]:
    """Direct against through the gateway, alternating; ``paced``: the upstream is bench/paced_upstream.py
    (no engine: what is left is the gateway's own cost), else a `corral serve` replica."""
    spec = paced_spec(args) if paced else corral_spec(args.threads, " ".join(args.serve_args))
    name = "relay" if paced else "overhead"
    levels = []
    with Server(spec, os.path.join(log_dir, f"{name}_upstream.log")) as replica:
        backend = {"url": replica.base_url, **({"scrape_metrics": False} if paced else {})}
        config = {"groups": {SERVED_NAME: {"backends": [backend]}}, "cache": {"enabled": False}}
        with Gateway(config, log_dir, f"{name}_gateway", args.threads) as gateway:
            print(f"{name}: upstream up in {replica.startup_s:.1f} s, gateway {gateway.startup_s:.1f} s", flush=True)
            warm = random_token_prompts(2, 32, vocab, seed=10_000)
            for url in (replica.base_url, gateway.base_url):
                bench(url, SERVED_NAME, warm, 8, 2, 0, args.timeout)
            for li, (conc, num) in enumerate(zip(args.concurrency, args.num_prompts)):
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                for rep in range(args.repeats):
                    for pi, (path, url) in enumerate((("direct", replica.base_url), ("gateway", gateway.base_url))):
                        prompts = random_token_prompts(num, args.input_len, vocab, seed=1000 * li + 10 * rep + pi)
                        try:
                            report = bench(url, SERVED_NAME, prompts, args.output_len, conc, rep, args.timeout)
                        except BaseException:
                            failed_tail(f"{name} {path} c={conc}", gateway.log_path if pi else replica.log_path)
                            raise
                        runs[path].append(summary(report))
                        print(f"  {name} c={conc} rep {rep} {path:7}: TTFT p50 {report.ttft.median_ms:7.1f} ms, "
                              f"{report.output_throughput:6.1f} tok/s, {report.num_failed} failed", flush=True)
                levels.append(overhead_level(conc, num, runs))
            gw_metrics = scrape(gateway.base_url)
        rss = replica.peak_rss_mib()
    return {"levels": levels, "replica_peak_rss_mib": rss, "serve_cmd": spec.cmd,
            "gateway_requests": series(gw_metrics, "corral_gateway_requests_total")}


def overhead_level(conc: int, num: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(path: str, *keys: str) -> float:
        values = []
        for run in runs[path]:
            value: Any = run
            for key in keys:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    d_ttft, g_ttft = med("direct", "ttft", "median_ms"), med("gateway", "ttft", "median_ms")
    d_tput, g_tput = med("direct", "output_throughput"), med("gateway", "output_throughput")
    return {"concurrency": conc, "num_prompts": num, "runs": runs,
            "ttft_p50_direct_ms": d_ttft, "ttft_p50_gateway_ms": g_ttft, "ttft_p50_added_ms": g_ttft - d_ttft,
            "e2e_p50_added_ms": med("gateway", "e2e", "median_ms") - med("direct", "e2e", "median_ms"),
            "tpot_p50_added_ms": med("gateway", "tpot", "median_ms") - med("direct", "tpot", "median_ms"),
            "throughput_direct": d_tput, "throughput_gateway": g_tput,
            "throughput_ratio": g_tput / d_tput if d_tput else None,
            "failed": sum(r["num_failed"] for path in runs.values() for r in path)}


def table_overhead(result: dict[str, Any]) -> str:
    rows = [[str(r["concurrency"]), str(r["num_prompts"]), f"{r['ttft_p50_direct_ms']:.1f}",
             f"{r['ttft_p50_gateway_ms']:.1f}", f"{r['ttft_p50_added_ms']:+.1f}", f"{r['tpot_p50_added_ms']:+.2f}",
             f"{r['e2e_p50_added_ms']:+.1f}",
             f"{r['throughput_direct']:.1f}", f"{r['throughput_gateway']:.1f}",
             f"{r['throughput_ratio']:.3f}" if r["throughput_ratio"] else "-", str(r["failed"])]
            for r in result["levels"]]
    return render(["streams", "prompts", "TTFT p50 direct ms", "TTFT p50 gateway ms", "added (<= 5)",
                   "TPOT p50 added ms", "E2E p50 added ms", "tok/s direct", "tok/s gateway", "gateway/direct (>= 0.95)", "failed"], rows)


# ---------------------------------------------------------------- routing


def part_routing(args: argparse.Namespace, tokenizer: Tokenizer, log_dir: str) -> dict[str, Any]:
    systems = system_prompts(args.systems, args.system_tokens, lambda text: len(tokenizer.encode(text)))
    prompts = shared_prefix_requests(systems, args.routing_requests, seed=args.seed)
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    print(f"routing: {len(systems)} system prompts, {len(prompts)} requests of {min(lengths)}-{max(lengths)} "
          f"tokens, {args.routing_concurrency} concurrent, {args.routing_output_len} out; "
          f"{args.replica_threads} threads per replica", flush=True)
    warm = random_token_prompts(2, 16, tokenizer.vocab_size, seed=20_000)
    rows = []
    for policy in args.policies:
        local = SERVE_ARGS + ["--kv-cache-memory", str(args.routing_kv_cache_memory)] + args.serve_args
        config = {"groups": {SERVED_NAME: {"backends": [{"local": local}] * 2, "routing": {"policy": policy}}}, "cache": {"enabled": False}}
        with Gateway(config, log_dir, f"routing_{policy}", args.replica_threads) as gateway:
            urls = gateway.backend_urls(SERVED_NAME)
            for url in urls:  # each replica warmed directly, on token ids that share nothing with the workload
                bench(url, SERVED_NAME, warm, 4, 2, 0, args.timeout)
            before = [scrape(u) for u in urls]
            gw_before = scrape(gateway.base_url)
            try:
                report = bench(gateway.base_url, SERVED_NAME, prompts, args.routing_output_len,
                               args.routing_concurrency, args.seed, args.timeout)
            except BaseException:
                failed_tail(f"routing {policy}", gateway.log_path)
                raise
            after = [scrape(u) for u in urls]
            gw = delta(scrape(gateway.base_url), gw_before)
        per = [(total(a, "corral:prefix_cache_hits_total") - total(b, "corral:prefix_cache_hits_total"),
                total(a, "corral:prefix_cache_queries_total") - total(b, "corral:prefix_cache_queries_total"))
               for a, b in zip(after, before)]
        hits, queries = sum(h for h, _ in per), sum(q for _, q in per)
        row = {"policy": policy, "hit_rate": hits / queries if queries else None, "prefix_hits": hits,
               "prefix_queries": queries, "per_replica": [{"hits": h, "queries": q} for h, q in per],
               "routes": series(gw, "corral_gateway_requests_total"), **summary(report)}
        rows.append(row)
        print(f"  {policy}: hit rate {row['hit_rate'] or 0:.3f}, TTFT p50 {report.ttft.median_ms:.0f} ms "
              f"p99 {report.ttft.p99_ms:.0f} ms, {report.output_throughput:.1f} tok/s, "
              f"{report.num_failed} failed", flush=True)
    return {"rows": rows, "system_prompts": len(systems), "prompt_tokens": [min(lengths), max(lengths)]}


def table_routing(result: dict[str, Any]) -> str:
    base = next((r for r in result["rows"] if r["policy"] == "round_robin"), result["rows"][0])
    rows = []
    for r in result["rows"]:
        split = "/".join(str(int(q)) for q in (p["queries"] for p in r["per_replica"]))
        rows.append([r["policy"], f"{r['hit_rate']:.3f}" if r["hit_rate"] is not None else "-",
                     f"{r['ttft']['median_ms']:.0f}", f"{r['ttft']['p99_ms']:.0f}",
                     f"{r['ttft']['median_ms'] / base['ttft']['median_ms']:.2f}" if base["ttft"]["median_ms"]
                     else "-", f"{r['output_throughput']:.1f}", split, str(r["num_failed"])])
    return render(["policy", "prefix hit rate", "TTFT p50 ms", "TTFT p99 ms", f"TTFT p50 vs {base['policy']}",
                   "output tok/s", "prompt tokens per replica", "failed"], rows)


# ---------------------------------------------------------------- degrade


def part_degrade(args: argparse.Namespace, vocab: int, log_dir: str) -> dict[str, Any]:
    print(f"degrade: burst of {args.burst} at `big` (--max-num-seqs {args.big_max_num_seqs}); fallback `small` "
          f"is the same model; on this {os.cpu_count()}-CPU host both replicas share the CPU "
          f"({args.replica_threads} threads each)", flush=True)
    prompts = random_token_prompts(args.burst, args.burst_input_len, vocab, seed=args.seed + 7)
    warm = random_token_prompts(2, 16, vocab, seed=30_000)
    rows = []
    for case in ("fallback", "queue"):
        big: dict[str, Any] = {"backends": [{"local": SERVE_ARGS + ["--max-num-seqs", str(args.big_max_num_seqs)]
                                             + args.serve_args}]}
        if case == "fallback":
            big.update(fallbacks=["small"], overload=args.overload)
        config = {"groups": {"big": big, "small": {"backends": [{"local": SERVE_ARGS + args.serve_args}]}},
                  "cache": {"enabled": False}}
        with Gateway(config, log_dir, f"degrade_{case}", args.replica_threads) as gateway:
            for group in ("big", "small"):
                for url in gateway.backend_urls(group):
                    bench(url, group, warm, 4, 2, 0, args.timeout)
            before = scrape(gateway.base_url)
            try:
                report = bench(gateway.base_url, "big", prompts, args.burst_output_len, args.burst, args.seed,
                               args.timeout)
            except BaseException:
                failed_tail(f"degrade {case}", gateway.log_path)
                raise
            gw = delta(scrape(gateway.base_url), before)
        fallbacks = total(gw, "corral_gateway_fallbacks_total")
        row = {"case": case, "fallbacks": fallbacks, "fallback_share": fallbacks / args.burst,
               "fallback_reasons": series(gw, "corral_gateway_fallbacks_total"),
               "answered_by_small": total(gw, "corral_gateway_requests_total", group="small"),
               "requests": series(gw, "corral_gateway_requests_total"), **summary(report)}
        rows.append(row)
        print(f"  {case}: {row['fallback_share']:.0%} to small, TTFT p50 {report.ttft.median_ms:.0f} ms "
              f"p99 {report.ttft.p99_ms:.0f} ms, {report.output_throughput:.1f} tok/s, "
              f"{report.num_failed} failed", flush=True)
    return {"rows": rows, "shared_cpu": True, "cpus": os.cpu_count()}


def table_degrade(result: dict[str, Any]) -> str:
    labels = {"fallback": "(a) fallbacks: [small], overload", "queue": "(b) no fallback (queues on big)"}
    rows = [[labels[r["case"]], f"{r['fallback_share']:.0%}", str(int(r["answered_by_small"])),
             f"{r['ttft']['median_ms']:.0f}", f"{r['ttft']['p99_ms']:.0f}", f"{r['e2e']['p99_ms']:.0f}",
             f"{r['output_throughput']:.1f}", str(r["num_failed"])] for r in result["rows"]]
    return render(["case", "answered by fallback", "relayed by small", "TTFT p50 ms", "TTFT p99 ms",
                   "E2E p99 ms", "output tok/s", "failed"], rows)


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--quick", action="store_true", help="smoke run: a few requests per part, short outputs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP threads of the overhead replica")
    p.add_argument("--replica-threads", type=int, default=None,
                   help="OMP threads of each gateway-started replica (default: threads / 2)")
    p.add_argument("--serve-args", default="", help="extra `corral serve` flags for every replica")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1200.0, help="hard limit of one benchmark run, seconds")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/gateway.json)")
    o = p.add_argument_group("overhead")
    o.add_argument("--repeats", type=int, default=None, help="alternating direct/gateway pairs (default 3)")
    o.add_argument("--concurrency", type=int, nargs="+", default=None, help="default 1 32")
    o.add_argument("--num-prompts", type=int, nargs="+", default=None, help="one per concurrency (default 8 64)")
    o.add_argument("--input-len", type=int, default=None, help="default 128")
    o.add_argument("--output-len", type=int, default=None, help="default 128")
    o.add_argument("--paced-ttft-ms", type=float, default=50.0, help="relay part: the paced upstream's first token")
    o.add_argument("--paced-tpot-ms", type=float, default=30.0, help="relay part: its time per output token")
    r = p.add_argument_group("routing")
    r.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    r.add_argument("--systems", type=int, default=None, help="distinct system prompts (default 16, at most 26)")
    r.add_argument("--system-tokens", type=int, default=500, help="least tokens of each system prompt")
    r.add_argument("--routing-requests", type=int, default=None, help="default 192")
    r.add_argument("--routing-kv-cache-memory", type=int, default=80 * 1024**2, metavar="BYTES",
                   help="each replica's KV pool (default 80 MiB)")
    r.add_argument("--routing-concurrency", type=int, default=None, help="default 8")
    r.add_argument("--routing-output-len", type=int, default=None, help="default 32")
    d = p.add_argument_group("degrade")
    d.add_argument("--burst", type=int, default=None, help="requests sent at once (default 48)")
    d.add_argument("--burst-input-len", type=int, default=64)
    d.add_argument("--burst-output-len", type=int, default=None, help="default 64")
    d.add_argument("--big-max-num-seqs", type=int, default=None, help="big's --max-num-seqs (default 4)")
    d.add_argument("--overload", type=float, default=None, help="big's overload load (default 4)")
    args = p.parse_args()
    full = {"repeats": 3, "concurrency": [1, 32], "num_prompts": [8, 64], "input_len": 128, "output_len": 128,
            "systems": 16, "routing_requests": 192, "routing_concurrency": 8, "routing_output_len": 32,
            "burst": 48, "burst_output_len": 64, "big_max_num_seqs": 4, "overload": 4.0}
    quick = {"repeats": 1, "concurrency": [1, 4], "num_prompts": [2, 8], "input_len": 64, "output_len": 16,
             "systems": 3, "routing_requests": 12, "routing_concurrency": 4, "routing_output_len": 8,
             "burst": 12, "burst_output_len": 16, "big_max_num_seqs": 2, "overload": 2.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.num_prompts) != len(args.concurrency):
        p.error("--num-prompts needs one count per --concurrency level")
    if not 1 <= args.systems <= 26:
        p.error("--systems must be 1 to 26")
    args.replica_threads = args.replica_threads or max(1, args.threads // 2)
    args.serve_args = args.serve_args.split()
    if args.out is None:
        args.out = os.path.join(HERE, "results", "logs" if args.quick else "", "gateway_quick.json" if args.quick
                                else "gateway.json")
    return args


def main() -> None:
    args = parse_args()
    parts = PARTS if args.part == "all" else (args.part,)
    busy, warning = quiet_check("before the benchmarks")
    if warning:
        print(warning, flush=True)
    log_dir = tempfile.mkdtemp(prefix="corral-gateway-bench-")
    print(f"logs and configs in {log_dir}", flush=True)
    tokenizer = Tokenizer.from_gguf(default_model_path())
    vocab = tokenizer.vocab_size
    results: dict[str, Any] = {}
    tables: dict[str, str] = {}
    began = time.monotonic()
    for part in parts:
        start = time.monotonic()
        if part in ("overhead", "relay"):
            result = part_overhead(args, vocab, log_dir, paced=part == "relay")
            tables[part] = table_overhead(result)
        elif part == "routing":
            result = part_routing(args, tokenizer, log_dir)
            tables[part] = table_routing(result)
        else:
            result = part_degrade(args, vocab, log_dir)
            tables[part] = table_degrade(result)
        results[part] = {**result, "seconds": time.monotonic() - start}
    busy_after, warning_after = quiet_check("right after the benchmarks")
    warnings = [w for w in (warning, warning_after) if w]
    titles = {"overhead": "Gateway relay overhead (same replica, direct vs through the gateway; medians over "
                          f"{args.repeats} repeats)",
              "relay": f"Gateway relay cost alone (a paced upstream: first token {args.paced_ttft_ms:g} ms, then "
                       f"one every {args.paced_tpot_ms:g} ms; medians over {args.repeats} repeats)",
              "routing": "Routing policy vs prefix-cache hit rate (2 local replicas, shared system prompts)",
              "degrade": f"Burst of {args.burst} at `big` with and without fallback to `small` (both replicas "
                         f"share this {os.cpu_count()}-CPU host)"}
    for part in parts:
        print(f"\n### {titles[part]}\n\n{tables[part]}")
    for w in warnings:
        print(w, flush=True)
    print(f"\ntook {time.monotonic() - began:.0f} s; logs in {log_dir}", flush=True)
    previous: dict[str, Any] = {}
    if os.path.exists(args.out):  # a run of one part keeps the others' last results
        with open(args.out) as f:
            previous = json.load(f).get("parts", {})
    record = {**provenance(), "args": vars(args), "cpu_busy_before": busy, "cpu_busy_after": busy_after,
              "warnings": warnings}
    parts_out = {**previous, **{part: {**results[part], "run": record} for part in parts}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**record, "parts": parts_out}, f, indent=2)
    print(f"wrote {os.path.relpath(args.out)}", flush=True)


if __name__ == "__main__":
    main()
