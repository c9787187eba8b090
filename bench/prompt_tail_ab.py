"""A/B in one process: what computing each prompt's last block per token costs (the rule that makes a
prefix-cache hit give the same greedy tokens as a cold request; docs/performance.md, "Repeatable greedy
output"). "dense" restores the previous layout: the whole prompt in one dense chunk, later positions per token.

    .venv/bin/python bench/prompt_tail_ab.py [--repeats 11] [--quick] [--output-json bench/results/prompt_tail_ab.json]

Prints, per workload, the median wall time of each layout over interleaved repeats and their ratio, and
writes them with the host and date."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from workloads import provenance

import corral.engine.input_builder as input_builder
from corral import LLM, SamplingParams

SENTENCE = "The history of science shows that careful measurement and honest reporting move knowledge forward. "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 40/128-token prompts, 4 x 4 tokens")
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/prompt_tail_ab.json"))
    args = parser.parse_args()
    repeats, lengths, batch_size, new_tokens = (1, (40, 128), 4, 4) if args.quick else (args.repeats, (40, 128, 512), 32, 32)

    llm = LLM(enable_prefix_caching=False, max_model_len=2048, kv_cache_memory=256 * 1024**2)
    tokenizer = llm.get_tokenizer()
    single = {f"TTFT, {n}-token prompt": [tokenizer.encode(SENTENCE * 100)[:n]] for n in lengths}
    batch = [tokenizer.encode(f"Write a detailed essay about topic number {i}: " + SENTENCE * (i % 4 + 1))
             for i in range(batch_size)]
    workloads = {**{name: (prompts, SamplingParams(temperature=0, max_tokens=1)) for name, prompts in single.items()},
                 f"{batch_size} prompts x {new_tokens} tokens":
                     (batch, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))}
    layouts = {"tail": input_builder.prompt_tail_start, "dense": lambda num_prompt_tokens, block_size: num_prompt_tokens}
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats):
        for layout in ("tail", "dense") if repeat % 2 else ("dense", "tail"):
            input_builder.prompt_tail_start = layouts[layout]
            for name, (prompts, params) in workloads.items():
                start = time.perf_counter()
                llm.generate(prompts, params, use_tqdm=False)
                times.setdefault((layout, name), []).append(time.perf_counter() - start)
    report = {**provenance(), "repeats": repeats, "results": {}}
    print(f"host: {report['host']['cpu']}, flags {', '.join(report['host']['simd_flags'])}; {repeats} repeats")
    for name in workloads:
        tail, dense = (statistics.median(times[(layout, name)]) for layout in ("tail", "dense"))
        report["results"][name] = {"dense_ms": dense * 1e3, "tail_ms": tail * 1e3, "tail_over_dense": tail / dense,
                                   "tail_runs_s": times[("tail", name)], "dense_runs_s": times[("dense", name)]}
        print(f"{name}: dense {dense * 1e3:.1f} ms, tail {tail * 1e3:.1f} ms, tail/dense {tail / dense:.3f}")
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
