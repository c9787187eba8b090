"""top-p on a CPU (docs/performance.md, "top-p on a CPU"): each row's 256 most likely tokens first, the full
sort only where the nucleus reaches past them, against sorting every row (the previous code), in one process.

- One row of the default model's 49,152-token vocabulary: ``topk(256)`` against a full sort (ms).
- Sampled decode of one request at a time (bench/spec_decode.py's story prompts: chat, temperature 0.8, top-p
  0.95, seed 0, EOS ignored): decode tok/s from the first token to the last with the code as it is and with
  every row sorted (patched in), each prompt run both ways back to back (order flipped every repeat); the
  speed-up is the median of the paired ratios. Also counts the rows that still took the full sort.

    .venv/bin/python bench/top_p.py [--repeats 5] [--max-tokens 192] [--quick] [--output-json bench/results/top_p.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from kernel_speed import median_ms
from spec_decode import decode_run, workloads
from torch import Tensor
from workloads import provenance

import corral.sample.ops as ops
from corral import LLM

VOCAB_SIZE = 49152

candidates_filter, sort_filter = ops._top_k_top_p_from_candidates, ops._top_k_top_p_sorted
rows = {"filtered": 0, "full_sort": 0}


def counted_candidates(logits: Tensor, top_k: Tensor | None, max_top_k: int, top_p: Tensor) -> Tensor:
    rows["filtered"] += logits.shape[0]
    return candidates_filter(logits, top_k, max_top_k, top_p)


def counted_sort(logits: Tensor, top_k: Tensor | None, top_p: Tensor) -> Tensor:
    rows["full_sort"] += logits.shape[0]
    return sort_filter(logits, top_k, top_p)


def every_row_sorted(logits: Tensor, top_k: Tensor | None, max_top_k: int, top_p: Tensor) -> Tensor:
    return sort_filter(logits, top_k, top_p)


MODES = {"candidates": (counted_candidates, counted_sort), "full sort": (every_row_sorted, sort_filter)}


def use(mode: str) -> None:
    ops._top_k_top_p_from_candidates, ops._top_k_top_p_sorted = MODES[mode]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="1 repeat, 1 prompt, 16 tokens: checks the script"
    )
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/top_p.json"))
    args = parser.parse_args()
    repeats, max_tokens, num_prompts = (
        (1, 16, 1) if args.quick else (args.repeats, args.max_tokens, args.prompts)
    )

    torch.manual_seed(0)
    row = torch.randn(1, VOCAB_SIZE) * 3
    micro = median_ms(
        {"topk(256)": lambda: row.topk(256, dim=-1), "full sort": lambda: row.sort(dim=-1)},
        max(5, 5 * repeats),
    )

    llm = LLM(max_model_len=1024, kv_cache_memory=128 * 1024**2)
    prompts, params = workloads(llm)["story (unfavourable)"]
    prompts, params = prompts[:num_prompts], replace(params, max_tokens=max_tokens)
    for mode in MODES:  # warm-up
        use(mode)
        decode_run(llm, prompts[0], replace(params, max_tokens=8))
    rows.update(filtered=0, full_sort=0)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        for prompt in prompts:
            for mode in list(MODES)[:: 1 if repeat % 2 == 0 else -1]:
                use(mode)
                seconds, tokens = decode_run(llm, prompt, params)
                rates[mode].append(tokens / seconds)
    use("candidates")
    pairs = [on / off for on, off in zip(rates["candidates"], rates["full sort"], strict=True)]
    results = {
        "row_ms": micro,
        "decode_tok_s": {mode: statistics.median(r) for mode, r in rates.items()},
        "decode_runs_tok_s": rates,
        "speed_up": statistics.median(pairs),
        "speed_up_range": [min(pairs), max(pairs)],
        "rows_filtered": rows["filtered"],
        "rows_full_sort": rows["full_sort"],
        "workload": {
            "prompts": num_prompts,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "repeats": repeats,
        },
    }
    print(
        f"one row of {VOCAB_SIZE}: topk(256) {micro['topk(256)']:.2f} ms, full sort {micro['full sort']:.2f} ms "
        f"({micro['full sort'] / micro['topk(256)']:.1f}x)"
    )
    print(
        f"sampled decode, one request: full sort {results['decode_tok_s']['full sort']:.1f} -> candidates "
        f"{results['decode_tok_s']['candidates']:.1f} tok/s, paired speed-up {results['speed_up']:.2f}x "
        f"({min(pairs):.2f}-{max(pairs):.2f}x over {len(pairs)} pairs); {rows['full_sort']} of "
        f"{rows['filtered']} rows took the full sort"
    )
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps({**provenance(), "results": results}, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
