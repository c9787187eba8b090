"""What ``batch_invariant=True`` costs and buys (docs/performance.md, "batch_invariant=True"), in one process,
on int8 weights by default (the linears' rows are independent of the batch there, so the mode is exact):

- Prefill: wall time of one prompt of 128 / 512 / 2048 tokens and 1 new token (prefix cache off), the default
  mode against the batch-invariant one, interleaved repeats; medians and their ratio.
- Identical outputs: workload B's chat prompts x 24 greedy tokens, each run alone and then all in one batch,
  in each mode: how many batched outputs equal the same prompt's alone run.

    .venv/bin/python bench/batch_invariant.py [--quantization int8] [--repeats 5] [--prompts 64] [--quick]
        [--output-json bench/results/batch_invariant.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from workloads import SENTENCE, provenance, workload_b

from corral import LLM, SamplingParams

MODES = {"default": False, "batch-invariant": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument(
        "--quick", action="store_true", help="1 repeat, 32/64-token prompts, 4 prompts x 4 tokens"
    )
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/batch_invariant.json"))
    args = parser.parse_args()
    if args.quick:
        args.prompt_lens, args.repeats, args.prompts, args.max_tokens = [32, 64], 1, 4, 4

    context = max(2048, 1 << max(args.prompt_lens).bit_length())
    engines = {
        mode: LLM(
            quantization=args.quantization,
            batch_invariant=invariant,
            enable_prefix_caching=False,
            max_model_len=context,
            kv_cache_memory=256 * 1024**2,
        )
        for mode, invariant in MODES.items()
    }
    tokenizer = engines["default"].get_tokenizer()
    text = tokenizer.encode(SENTENCE * (max(args.prompt_lens) // 10 + 1))
    one_token = SamplingParams(temperature=0, max_tokens=1)
    for llm in engines.values():  # warm-up
        llm.generate([text[:16]], one_token, use_tqdm=False)

    seconds: dict[str, dict[int, list[float]]] = {mode: {n: [] for n in args.prompt_lens} for mode in MODES}
    for repeat in range(args.repeats):
        for mode in list(MODES)[:: 1 if repeat % 2 == 0 else -1]:
            for n in args.prompt_lens:
                start = time.perf_counter()
                engines[mode].generate([text[:n]], one_token, use_tqdm=False)
                seconds[mode][n].append(time.perf_counter() - start)
    prefill = {
        n: {
            **{f"{mode}_s": statistics.median(seconds[mode][n]) for mode in MODES},
            "invariant_over_default": statistics.median(seconds["batch-invariant"][n])
            / statistics.median(seconds["default"][n]),
            "runs_s": {mode: seconds[mode][n] for mode in MODES},
        }
        for n in args.prompt_lens
    }

    prompts = [
        tokenizer.encode(
            tokenizer.apply_chat_template(c, add_generation_prompt=True), add_special_tokens=False
        )
        for c in workload_b(args.prompts)
    ]
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    identical = {}
    for mode, llm in engines.items():
        alone = [llm.generate([p], greedy, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
        batched = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
        identical[mode] = sum(a == b for a, b in zip(alone, batched, strict=True))

    print(f"quantization {args.quantization}, medians of {args.repeats} interleaved repeats")
    for n, row in prefill.items():
        print(
            f"prefill {n} tokens: default {row['default_s']:.3f} s, batch-invariant {row['batch-invariant_s']:.3f} s "
            f"({row['invariant_over_default']:.2f}x)"
        )
    for mode, count in identical.items():
        print(
            f"{mode}: {count}/{len(prompts)} prompts give the same {args.max_tokens} greedy tokens alone and batched"
        )
    results = {
        "quantization": args.quantization,
        "repeats": args.repeats,
        "prefill": prefill,
        "identical_alone_vs_batched": {**identical, "prompts": len(prompts), "max_tokens": args.max_tokens},
    }
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps({**provenance(), "results": results}, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
