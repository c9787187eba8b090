"""A/B in one process: what computing each prompt's last block per token costs (the rule that makes a
prefix-cache hit give the same greedy tokens as a cold request; docs/performance.md, "Repeatable greedy
output"). "dense" restores the previous layout: the whole prompt in one dense chunk, later positions per token.

    .venv/bin/python bench/prompt_tail_ab.py [--repeats 11]

Prints, per workload, the median wall time of each layout over interleaved repeats and their ratio."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import corral.engine.input_builder as input_builder
from corral import LLM, SamplingParams
from corral.platform import cpu_flags

SENTENCE = "The history of science shows that careful measurement and honest reporting move knowledge forward. "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    llm = LLM(enable_prefix_caching=False, max_model_len=2048, kv_cache_memory=256 * 1024**2)
    tokenizer = llm.get_tokenizer()
    single = {f"TTFT, {n}-token prompt": [tokenizer.encode(SENTENCE * 100)[:n]] for n in (40, 128, 512)}
    batch = [tokenizer.encode(f"Write a detailed essay about topic number {i}: " + SENTENCE * (i % 4 + 1)) for i in range(32)]
    workloads = {**{name: (prompts, SamplingParams(temperature=0, max_tokens=1)) for name, prompts in single.items()},
                 "32 prompts x 32 tokens": (batch, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))}
    layouts = {"tail": input_builder.prompt_tail_start, "dense": lambda num_prompt_tokens, block_size: num_prompt_tokens}
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for layout in ("tail", "dense") if repeat % 2 else ("dense", "tail"):
            input_builder.prompt_tail_start = layouts[layout]
            for name, (prompts, params) in workloads.items():
                start = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                times.setdefault((layout, name), []).append(time.perf_counter() - start)
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"})
    print(f"host: {platform.processor() or platform.machine()}, flags {', '.join(flags)}; {args.repeats} repeats")
    for name in workloads:
        tail, dense = (statistics.median(times[(layout, name)]) for layout in ("tail", "dense"))
        print(f"{name}: dense {dense * 1e3:.1f} ms, tail {tail * 1e3:.1f} ms, tail/dense {tail / dense:.3f}")


if __name__ == "__main__":
    main()
