"""How `corral serve` scales: output tok/s and TPOT p50 vs concurrency, and vs prompt length.

Starts `corral serve` once and drives it with corral.bench.serve (streaming /v1/completions, greedy, EOS
ignored) on random-token prompts (a fresh seed per level, so nothing comes from the prefix cache):
  - concurrency 1, 2, 4, 8, 16, 32, 64: 128-token prompts, 128 output tokens, max(2 x concurrency, 8)
    prompts (at most --max-prompts);
  - prompt length 128, 512, 2048 at concurrency 8: 64 output tokens, 16 prompts (8 for 2048).
The whole sweep is bounded by --max-seconds (default 840): each level's prompt count is cut to what the
previous level's throughput says fits in the time left (never below one wave of `concurrency` requests),
a level that cannot fit is skipped, and every level has a hard time limit. Prints a table, writes
bench/results/scaling.json and a two-panel plot bench/results/scaling.png (needs matplotlib: the bench
extra). `make bench-scaling` runs it:

    .venv/bin/python bench/scaling.py [--max-seconds 840] [--concurrency 1 2 4 8 16 32 64]
        [--prompt-lens 128 512 2048] [--corral-serve-args "--max-num-seqs 128"] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from servers import Server, corral_spec, quiet_check  # noqa: E402
from workloads import provenance  # noqa: E402

from corral.bench.datasets import random_token_prompts  # noqa: E402
from corral.bench.serve import BenchmarkReport, run_benchmark  # noqa: E402
from corral.loader.default_model import default_model_path  # noqa: E402
from corral.text.tokenizer import Tokenizer  # noqa: E402


@dataclass
class Level:
    sweep: str  # "concurrency" or "prompt_len"
    concurrency: int
    input_len: int
    output_len: int
    num_prompts: int  # as planned, before the time budget cuts it


@dataclass
class Budget:
    """A global deadline, plus the last measured rates to predict how long a level will take."""

    deadline: float
    decode_tok_s: float | None = None  # output tok/s of the last level (grows with concurrency: conservative)
    prefill_tok_s: float | None = None  # prompt tokens / TTFT of a single stream (batched prefill is faster)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate_s(self, level: Level, num_prompts: int) -> float:
        if self.decode_tok_s is None:
            return 0.0
        prefill = num_prompts * level.input_len / self.prefill_tok_s if self.prefill_tok_s else 0.0
        return num_prompts * level.output_len / self.decode_tok_s + prefill

    def fit(self, level: Level, reserve_s: float) -> int:
        """Prompts that fit in the time left minus ``reserve_s``: the planned count, fewer, or 0 (skip)."""
        available = self.left() - reserve_s
        n = level.num_prompts
        while n > level.concurrency and self.estimate_s(level, n) > available:
            n = max(level.concurrency, n // 2)
        return n if self.estimate_s(level, n) <= available else 0


def plan(args: argparse.Namespace) -> list[Level]:
    levels = [Level("concurrency", c, args.input_len, args.output_len, min(max(2 * c, 8), args.max_prompts))
              for c in args.concurrency]
    for length in args.prompt_lens:
        levels.append(Level("prompt_len", args.len_concurrency, length, args.len_output_len,
                            8 if length >= 2048 else 16))
    return levels


def run_level(server: Server, level: Level, num_prompts: int, vocab: int, seed: int, hard_limit_s: float
              ) -> BenchmarkReport | None:
    prompts = random_token_prompts(num_prompts, level.input_len, vocab, seed=seed)

    async def bounded() -> BenchmarkReport:
        return await asyncio.wait_for(
            run_benchmark(server.base_url, "m", prompts, level.output_len, max_concurrency=level.concurrency,
                          show_progress=False, timeout_s=hard_limit_s),
            timeout=hard_limit_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        return None


def render(rows: list[dict[str, Any]]) -> str:
    header = ["sweep", "concurrency", "prompt len", "output len", "prompts", "output tok/s", "TPOT p50 ms",
              "TTFT p50 ms", "seconds", "failed"]
    body = []
    for r in rows:
        if r.get("skipped"):
            body.append([r["sweep"], str(r["concurrency"]), str(r["input_len"]), str(r["output_len"]), "-",
                         "skipped", "-", "-", "-", r["skipped"]])
            continue
        body.append([r["sweep"], str(r["concurrency"]), str(r["input_len"]), str(r["output_len"]),
                     str(r["num_prompts"]), f"{r['output_throughput']:.1f}", f"{r['tpot']['median_ms']:.1f}",
                     f"{r['ttft']['median_ms']:.0f}", f"{r['duration_s']:.1f}", str(r["num_failed"])])
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def plot(rows: list[dict[str, Any]], path: str, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", flush=True)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, sweep, key, xlabel in ((left, "concurrency", "concurrency", "concurrent streams"),
                                   (right, "prompt_len", "input_len", "prompt length (tokens)")):
        done = [r for r in rows if r["sweep"] == sweep and not r.get("skipped")]
        xs = [r[key] for r in done]
        ax.plot(xs, [r["output_throughput"] for r in done], "o-", color="tab:blue", label="output tok/s")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("output tok/s", color="tab:blue")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(xs, [r["tpot"]["median_ms"] for r in done], "s--", color="tab:red", label="TPOT p50")
        twin.set_ylabel("TPOT p50 (ms)", color="tab:red")
        twin.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        first = done[0] if done else None
        detail = (f"{first['input_len']}-token prompts, {first['output_len']} out" if sweep == "concurrency" and first
                  else f"concurrency {first['concurrency']}, {first['output_len']} out" if first else "")
        ax.set_title(f"vs {xlabel} ({detail})")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-prompts", type=int, default=None, help="cap per concurrency level (default 128)")
    parser.add_argument("--prompt-lens", type=int, nargs="*", default=[128, 512, 2048])
    parser.add_argument("--len-concurrency", type=int, default=8)
    parser.add_argument("--len-output-len", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=None, help="budget for the whole sweep (default 840)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corral-serve-args", default="", help="extra `corral serve` flags")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: concurrency 1 2 4, prompt lens 128 512, 8 prompts, 240 s")
    parser.add_argument("--output-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.prompt_lens = [1, 2, 4], [128, 512]
    if args.max_prompts is None:
        args.max_prompts = 8 if args.quick else 128
    if args.max_seconds is None:
        args.max_seconds = 240.0 if args.quick else 840.0
    return args


def main() -> None:
    args = parse_args()
    busy, warning = quiet_check("before the sweep")
    if warning:
        print(warning, flush=True)
    began = time.monotonic()
    os.makedirs(os.path.join(args.output_dir, "logs"), exist_ok=True)
    vocab = Tokenizer.from_gguf(default_model_path()).vocab_size
    levels = plan(args)
    max_len = max([args.input_len + args.output_len, *(n + args.len_output_len for n in args.prompt_lens)])
    context = max(2048, 1 << (max_len - 1).bit_length())
    spec = corral_spec(args.threads, args.corral_serve_args, max_model_len=context)
    rows: list[dict[str, Any]] = []
    with Server(spec, os.path.join(args.output_dir, "logs", "scaling_serve.log")) as server:
        print(f"corral serve up in {server.startup_s:.1f} s (max-model-len {context}); "
              f"budget {args.max_seconds:.0f} s", flush=True)
        asyncio.run(run_benchmark(server.base_url, "m", random_token_prompts(2, 32, vocab, seed=999), 8,
                                  max_concurrency=2, show_progress=False))  # warm-up
        budget = Budget(deadline=began + args.max_seconds)
        length_levels = sum(1 for level in levels if level.sweep == "prompt_len")
        for index, level in enumerate(levels):
            # Keep a share of the budget for the prompt-length sweep while the concurrency sweep runs.
            reserve = 0.35 * args.max_seconds if level.sweep == "concurrency" and length_levels else 0.0
            num = level.num_prompts if budget.decode_tok_s is None else budget.fit(level, reserve)
            row: dict[str, Any] = {"sweep": level.sweep, "concurrency": level.concurrency,
                                   "input_len": level.input_len, "output_len": level.output_len,
                                   "planned_prompts": level.num_prompts}
            if num == 0 or budget.left() <= 0:
                row["skipped"] = "time budget"
                rows.append(row)
                print(f"{level.sweep} c={level.concurrency} len={level.input_len}: skipped (time budget)", flush=True)
                continue
            estimate = budget.estimate_s(level, num)
            hard_limit = budget.left() if estimate == 0 else max(60.0, min(budget.left(), 3 * estimate + 60.0))
            report = run_level(server, level, num, vocab, seed=index, hard_limit_s=hard_limit)
            if report is None:
                row["skipped"] = f"timed out after {hard_limit:.0f} s"
                rows.append(row)
                print(f"{level.sweep} c={level.concurrency} len={level.input_len}: timed out", flush=True)
                continue
            row.update(report.to_dict(), num_prompts=num)
            rows.append(row)
            if report.output_throughput > 0:
                budget.decode_tok_s = report.output_throughput
            if budget.prefill_tok_s is None and report.ttft.median_ms > 0:
                budget.prefill_tok_s = level.input_len / (report.ttft.median_ms / 1000.0)
            print(f"{level.sweep} c={level.concurrency} len={level.input_len} n={num}: "
                  f"{report.output_throughput:.1f} tok/s, TPOT p50 {report.tpot.median_ms:.1f} ms, "
                  f"TTFT p50 {report.ttft.median_ms:.0f} ms, {report.duration_s:.0f} s, "
                  f"{report.num_failed} failed", flush=True)
        rss = server.peak_rss_mib()

    total = time.monotonic() - began
    busy_after, warning_after = quiet_check("right after the sweep")
    warnings = [w for w in (warning, warning_after) if w]
    table = render(rows)
    print("\n" + table)
    for w in warnings:
        print(w, flush=True)
    print(f"\ncorral serve peak RSS {rss:.0f} MiB; sweep took {total:.0f} s "
          f"(budget {args.max_seconds:.0f} s); {args.threads} threads", flush=True)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    with open(os.path.join(args.output_dir, "scaling.json"), "w") as f:
        json.dump({**provenance(), "rows": rows, "peak_rss_mib": rss, "seconds": total, "args": vars(args),
                   "serve_cmd": spec.cmd, "cpu_busy_before": busy, "cpu_busy_after": busy_after,
                   "warnings": warnings}, f, indent=2)
    with open(os.path.join(args.output_dir, "scaling.md"), "w") as f:
        f.write(f"# corral serve scaling ({stamp})\n\n{table}\n" + "".join(f"\n{w}\n" for w in warnings))
    png = os.path.join(args.output_dir, "scaling.png")
    if plot(rows, png, f"corral serve, SmolLM2-135M, {args.threads} threads ({stamp})"):
        print(f"wrote {os.path.relpath(png)}", flush=True)


if __name__ == "__main__":
    main()
