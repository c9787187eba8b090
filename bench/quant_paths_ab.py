"""The default path (a GGUF's own blocks on the C++ kernels) against the former int8 default (int8 weights
and activations on fbgemm, SmoothQuant), in one process (docs/performance.md, "Performance paths"): output
tok/s of workload A's 32 prompts x 128 greedy tokens, and single-stream decode tok/s and TTFT of its first
prompt (bench/offline.py's measurements). The engines take turns every repeat; ratios are the medians of each
repeat's ratio to the first quantization, so drift in the host hits both sides alike.

    .venv/bin/python bench/quant_paths_ab.py [--quantization auto int8] [--repeats 3] [--quick]
        [--output-json bench/results/quant_paths_ab.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import offline
from offline import corral_batched, corral_single
from workloads import provenance, workload_a

from corral import LLM

METRICS = ("batched_tok_s", "single_decode_tok_s", "ttft_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantization", nargs="+", default=["auto", "int8"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4 prompts x 16 tokens")
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/quant_paths_ab.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.prompts, args.new_tokens = 1, 4, 16
    offline.NEW_TOKENS = args.new_tokens  # read by corral_batched / corral_single

    engines = {q: LLM(quantization=q, max_model_len=1024) for q in args.quantization}
    tokenizer = engines[args.quantization[0]].get_tokenizer()
    prompts = [tokenizer.encode(p) for p in workload_a(args.prompts)]
    for llm in engines.values():  # warm-up
        corral_batched(llm, prompts[:2])

    runs: dict[str, dict[str, list[float]]] = {q: {m: [] for m in METRICS} for q in engines}
    for repeat in range(args.repeats):
        for q in list(engines)[:: 1 if repeat % 2 == 0 else -1]:
            # a fresh second token each repeat, so no run starts from what the prefix cache kept of the last
            salted = [[p[0], 1000 + repeat, *p[1:]] for p in prompts]
            runs[q]["batched_tok_s"].append(corral_batched(engines[q], salted))
            ttft, decode = corral_single(engines[q], [prompts[0][0], 2000 + repeat, *prompts[0][1:]])
            runs[q]["ttft_s"].append(ttft)
            runs[q]["single_decode_tok_s"].append(decode)
    first = args.quantization[0]
    results = {}
    for q, values in runs.items():
        results[q] = {m: statistics.median(v) for m, v in values.items()}
        results[q]["ratio_to_" + first] = {
            m: statistics.median(a / b for a, b in zip(v, runs[first][m], strict=True))
            for m, v in values.items()
        }
        results[q]["runs"] = values
    for q, row in results.items():
        ratio = row["ratio_to_" + first]
        print(
            f"{q}: {args.prompts} prompts {row['batched_tok_s']:.1f} tok/s ({ratio['batched_tok_s']:.2f}x {first}), "
            f"single decode {row['single_decode_tok_s']:.1f} tok/s ({ratio['single_decode_tok_s']:.2f}x), "
            f"TTFT {row['ttft_s'] * 1e3:.0f} ms ({ratio['ttft_s']:.2f}x)"
        )
    workload = {
        "prompts": args.prompts,
        "prompt_tokens": sum(map(len, prompts)),
        "new_tokens": args.new_tokens,
    }
    report = {**provenance(), "repeats": args.repeats, "workload": workload, "results": results}
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
