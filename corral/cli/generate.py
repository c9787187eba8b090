"""``corral generate``: print one completion. Heavy imports stay inside ``run``."""

from __future__ import annotations

import argparse

from corral.cli import add_activation_bits_argument
from corral.config import KV_CACHE_DTYPES, QUANTIZATIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default: SmolLM2-135M)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quantization", default="auto", choices=QUANTIZATIONS,
                        help="auto: a GGUF file's own Q4_0/Q4_1/Q8_0 blocks on the C++ kernels, else int8 on fbgemm; none: the exact float path; int8: int8 weights and activations (fbgemm); int4: 4-bit weights; gguf: the file's own blocks")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                        help="auto: int8 beside quantized weights, else the model's dtype; model; int8: 8-bit K/V with a scale per token and head (3.76x the tokens of fp32)")
    add_activation_bits_argument(parser)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")


def run(args: argparse.Namespace) -> int:
    from corral.llm import LLM
    from corral.sample.params import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed,
    )
    llm = LLM(model=args.model, quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
              activation_bits=args.activation_bits)
    if args.chat:
        output = llm.chat([{"role": "user", "content": args.prompt}], params, use_tqdm=False)[0]
    else:
        output = llm.generate(args.prompt, params, use_tqdm=False)[0]
    print(output.outputs[0].text)
    return 0
