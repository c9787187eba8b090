"""Drawing a sampled token on a CPU (docs/performance.md, "Sampling on a CPU"): one uniform a row and the
inverse of the row's cumulative sum (the code) against the exponential race, argmax(p_i / q_i) with V
exponentials q_i a row (the previous code, patched in here), in one process.

- ``random_sample`` alone on rows of the default model's 49,152-token vocabulary, every row seeded (ms).
- Sampled decode (bench/spec_decode.py's story prompts: chat, temperature 0.8, top-p 0.95, seed 0, EOS
  ignored): one request at a time (decode tok/s from the first token to the last) and all 8 prompts at once
  (output tok/s), and the 8 four times over (32 at once), both ways back to back (order flipped every
  repeat); speed-ups are medians of the paired ratios.

    .venv/bin/python bench/random_sample.py [--repeats 4] [--max-tokens 128] [--quick]
        [--output-json bench/results/random_sample.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from kernel_speed import median_ms
from spec_decode import batch_rate, decode_run, workloads
from workloads import provenance

import corral.sample.ops as ops
from corral import LLM

VOCAB_SIZE = 49152
inverse_cdf_sample = ops.random_sample


def exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """The previous draw: V exponentials a row, token argmax(p_i / q_i)."""
    q = torch.empty_like(probs)
    if len(generators) < probs.shape[0]:
        q.exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return probs.div(q).argmax(dim=-1)


MODES = {"inverse cdf": inverse_cdf_sample, "exponential race": exponential_race}


def use(mode: str) -> None:
    """Every caller imported the name itself: swap it in each module."""
    import corral.sample.rejection as rejection
    import corral.sample.sampler as sampler
    import corral.spec_decode.draft_model as draft_model

    ops.random_sample = sampler.random_sample = rejection.random_sample = draft_model.random_sample = MODES[mode]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 16 tokens: checks the script")
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/random_sample.json"))
    args = parser.parse_args()
    repeats, max_tokens = (1, 16) if args.quick else (args.repeats, args.max_tokens)

    torch.manual_seed(0)
    micro = {}
    for num_rows in (1, 8, 32):
        probs = torch.softmax(torch.randn(num_rows, VOCAB_SIZE) * 3, dim=-1)
        generators = {r: torch.Generator().manual_seed(r) for r in range(num_rows)}  # kept per request, as the engine does
        micro[num_rows] = median_ms(
            {mode: (lambda f=f, p=probs, g=generators: f(p, g)) for mode, f in MODES.items()}, max(5, 5 * repeats)
        )

    llm = LLM(max_model_len=1024, kv_cache_memory=128 * 1024**2)
    prompts, params = workloads(llm)["story (unfavourable)"]
    params = replace(params, max_tokens=max_tokens)
    for mode in MODES:  # warm-up
        use(mode)
        decode_run(llm, prompts[0], replace(params, max_tokens=8))
    single: dict[str, list[float]] = {mode: [] for mode in MODES}
    batch: dict[str, list[float]] = {mode: [] for mode in MODES}
    batch32: dict[str, list[float]] = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        order = list(MODES)[:: 1 if repeat % 2 == 0 else -1]
        for prompt in prompts[:3]:
            for mode in order:
                use(mode)
                seconds, tokens = decode_run(llm, prompt, params)
                single[mode].append(tokens / seconds)
        for mode in order:
            use(mode)
            batch[mode].append(batch_rate(llm, prompts, params, max_tokens))
        for mode in order:
            use(mode)
            batch32[mode].append(batch_rate(llm, prompts * 4, params, max_tokens))  # each salted apart
    use("inverse cdf")

    def paired(rates: dict[str, list[float]]) -> list[float]:
        return [new / old for new, old in zip(rates["inverse cdf"], rates["exponential race"], strict=True)]

    results = {
        "random_sample_ms": micro,
        "single_tok_s": {mode: statistics.median(r) for mode, r in single.items()},
        "batch8_tok_s": {mode: statistics.median(r) for mode, r in batch.items()},
        "single_speed_up": statistics.median(paired(single)),
        "batch8_speed_up": statistics.median(paired(batch)),
        "batch32_tok_s": {mode: statistics.median(r) for mode, r in batch32.items()},
        "batch32_speed_up": statistics.median(paired(batch32)),
        "batch32_pairs": paired(batch32),
        "single_pairs": paired(single),
        "batch8_pairs": paired(batch),
        "workload": {"prompts": len(prompts), "max_tokens": max_tokens, "temperature": params.temperature,
                     "top_p": params.top_p, "seed": params.seed, "repeats": repeats},
    }
    for num_rows, ms in micro.items():
        print(f"random_sample, {num_rows} seeded rows of {VOCAB_SIZE}: exponential race "
              f"{ms['exponential race']:.2f} ms, inverse cdf {ms['inverse cdf']:.2f} ms")
    for name, rates, key in (("one request", single, "single_speed_up"), ("8 at once", batch, "batch8_speed_up"),
                             ("32 at once", batch32, "batch32_speed_up")):
        print(f"sampled decode, {name}: {statistics.median(rates['exponential race']):.1f} -> "
              f"{statistics.median(rates['inverse cdf']):.1f} tok/s, paired speed-up {results[key]:.2f}x")
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps({**provenance(), "results": results}, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
