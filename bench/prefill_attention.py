"""Prefill attention: corral's C++ kernel against torch's SDPA, one layer's call and the default model's TTFT,
alternating in one process (docs/performance.md, "Prefill attention in C++").

    .venv/bin/python bench/prefill_attention.py [--repeats 7] [--ttft-repeats 5]

Needs a CPU where the kernel runs (AVX-512); elsewhere corral uses SDPA and there is nothing to compare.
Writes bench/results/prefill_attention.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from workloads import provenance

from corral import LLM, SamplingParams
from corral.kernels import cpu_extension
from corral.layers.attention.torch_paged import TorchPagedAttention

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE = 9, 3, 64  # the default model's
CASES = [(512, 512), (2048, 2048), (512, 1024), (512, 2048)]  # (query tokens, context tokens)


def sdpa(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    q = query.transpose(0, 1).unsqueeze(0)
    return F.scaled_dot_product_attention(q, keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask,
                                          is_causal=mask is None, scale=HEAD_SIZE**-0.5, enable_gqa=True)


def chunk_mask(query_len: int, context_len: int) -> torch.Tensor | None:
    if query_len == context_len:
        return None
    positions = torch.arange(query_len)[:, None] + (context_len - query_len)
    return torch.zeros(query_len, context_len).masked_fill_(torch.arange(context_len)[None, :] > positions,
                                                            float("-inf"))


def alternate(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, the order flipped every repeat."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(repeats):
        for name in (list(calls) if repeat % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def layer_case(kernels, query_len: int, context_len: int, repeats: int) -> dict:
    query = torch.randn(query_len, NUM_HEADS, HEAD_SIZE)
    keys, values = torch.randn(2, NUM_KV_HEADS, context_len, HEAD_SIZE)
    mask = chunk_mask(query_len, context_len)
    seconds = alternate({
        "sdpa": lambda: sdpa(query, keys, values, mask),
        "kernel": lambda: kernels.prefill_attention(query, keys, values, HEAD_SIZE**-0.5),
    }, repeats)
    row = {"query_tokens": query_len, "context_tokens": context_len,
           **{f"{name}_ms": 1e3 * statistics.median(s) for name, s in seconds.items()}}
    print(f"{query_len} queries over {context_len}: SDPA {row['sdpa_ms']:.2f} ms, kernel {row['kernel_ms']:.2f} ms")
    return row


def ttft(repeats: int) -> list[dict]:
    llm = LLM(max_model_len=4096)
    with_kernel = TorchPagedAttention._prefill_kernel
    params = SamplingParams(temperature=0.0, max_tokens=1)
    rng = random.Random(0)

    def run(use_kernel: bool, prompt_len: int) -> None:
        TorchPagedAttention._prefill_kernel = with_kernel if use_kernel else (lambda self, device: None)
        prompt = [rng.randrange(100, 49152) for _ in range(prompt_len)]  # fresh: no prefix-cache hits
        llm.generate([prompt], params, use_tqdm=False)

    rows = []
    for prompt_len in (512, 2048):
        run(True, prompt_len)  # warm-up
        seconds = alternate({"sdpa": functools.partial(run, False, prompt_len),
                             "kernel": functools.partial(run, True, prompt_len)}, repeats)
        rows.append({"prompt_tokens": prompt_len, **{f"{n}_ms": 1e3 * statistics.median(s) for n, s in seconds.items()}})
        print(f"TTFT at {prompt_len} tokens: SDPA {rows[-1]['sdpa_ms']:.0f} ms, kernel {rows[-1]['kernel_ms']:.0f} ms")
    TorchPagedAttention._prefill_kernel = with_kernel
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternating calls per layer case")
    parser.add_argument("--ttft-repeats", type=int, default=5, help="prompts per side and length (0: skip TTFT)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "prefill_attention.json"))
    args = parser.parse_args()
    kernels = cpu_extension.load()
    if kernels is None or not kernels.prefill_attention_supported(HEAD_SIZE):
        raise SystemExit("the prefill kernel does not run on this CPU (AVX-512 needed): nothing to compare")
    layer = [layer_case(kernels, query_len, context_len, args.repeats) for query_len, context_len in CASES]
    result = {**provenance(), "threads": torch.get_num_threads(), "layer": layer,
              "ttft": ttft(args.ttft_repeats) if args.ttft_repeats else []}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
