"""Offline benchmark: corral vs HF transformers on the same GGUF weights, in one run.

Prints generated tokens/s on 32 prompts x 128 tokens (workload A of shared/MACHINE.md) and
single-request decode tok/s, each as a median of repeats, with corral/HF ratios; writes JSON.

    .venv/bin/python bench/offline.py [--repeats 3] [--hf-batch 16] [--hf-dtype float32] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime

import torch

sys.path.insert(0, os.path.dirname(__file__))
from workloads import provenance, workload_a  # noqa: E402

from corral import LLM, SamplingParams  # noqa: E402
from corral.loader.default_model import default_model_path  # noqa: E402

NEW_TOKENS = 128


def corral_batched(llm: LLM, prompts: list[list[int]]) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def corral_single(llm: LLM, prompt: list[int]) -> tuple[float, float]:
    """(time to first token in s, decode tok/s after it)."""
    start = time.perf_counter()
    llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True), use_tqdm=False)
    total = time.perf_counter() - start
    # The prompt's blocks are now cached, so its prefill is mostly skipped; subtract one TTFT anyway.
    return ttft, (NEW_TOKENS - 1) / max(total - ttft, 1e-9)


def hf_model(model_path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=dtype
    )
    return model.eval()


def hf_batched(model, prompts: list[list[int]], batch_size: int, pad_id: int) -> float:
    """Static batches with left padding, as HF users run offline generation."""
    start = time.perf_counter()
    generated = 0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                do_sample=False, pad_token_id=pad_id,
            )
        generated += (out.shape[1] - width) * len(chunk)
    return generated / (time.perf_counter() - start)


def hf_single(model, prompt: list[int], pad_id: int) -> tuple[float, float]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=pad_id)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad_id)
        total = time.perf_counter() - start
    return ttft, (NEW_TOKENS - 1) / max(total - ttft, 1e-9)


def median_of(fn, repeats: int):
    results = [fn() for _ in range(repeats)]
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-batch", type=int, default=16)
    parser.add_argument("--hf-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="HF's weights and compute (bfloat16: fast where the CPU has AMX)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--output-json", default="bench/results/offline.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    llm = LLM(dtype="float32", max_model_len=1024, max_num_seqs=64, max_num_batched_tokens=512)
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in workload_a()]
    single_prompt = prompts[0]
    corral_batched(llm, prompts[:4])  # warm-up

    results = {"corral": {}, "hf": {}}
    results["corral"]["batched_tok_s"] = median_of(lambda: corral_batched(llm, prompts), args.repeats)
    ttft, decode = median_of(lambda: corral_single(llm, single_prompt), args.repeats)
    results["corral"].update(single_decode_tok_s=decode, ttft_s=ttft)

    if not args.skip_hf:
        model = hf_model(default_model_path(), getattr(torch, args.hf_dtype))
        pad = tokenizer.eos_token_id
        results["hf"]["batched_tok_s"] = median_of(lambda: hf_batched(model, prompts, args.hf_batch, pad), 1)
        ttft, decode = median_of(lambda: hf_single(model, single_prompt, pad), args.repeats)
        results["hf"].update(single_decode_tok_s=decode, ttft_s=ttft)

    print(f"workload A: {len(prompts)} prompts ({sum(map(len, prompts))} tokens), {NEW_TOKENS} new tokens each, HF in {args.hf_dtype}")
    print(f"{'':28}{'corral':>10}{'HF':>10}{'ratio':>8}")
    for key, label in [("batched_tok_s", "32 prompts (tok/s)"), ("single_decode_tok_s", "single decode (tok/s)"),
                       ("ttft_s", "TTFT (s)")]:
        ours, theirs = results["corral"][key], results["hf"].get(key)
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        print(f"{label:28}{ours:10.2f}{(theirs or float('nan')):10.2f}{ratio:>8}")
    results["meta"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hf_batch": args.hf_batch,
        "hf_dtype": args.hf_dtype,
    }
    os.makedirs(os.path.dirname(args.output_json), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump({**provenance(), **results}, f, indent=2)


if __name__ == "__main__":
    main()
