"""``corral generate``: print one completion. Heavy imports stay inside ``run``."""

from __future__ import annotations

import argparse

from corral.cli import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-tokens", type=int, default=64, help="tokens to generate")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 for greedy")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep this much probability mass")
    sampling.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    sampling.add_argument("--seed", type=int, default=None, help="seed of this request's sampling")
    add_model_arguments(parser.add_argument_group("model"))


def run(args: argparse.Namespace) -> int:
    from corral.llm import LLM
    from corral.sample.params import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed,
    )
    llm = LLM(model=args.model, quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
              activation_bits=args.activation_bits, batched_linears=args.batched_linears,
              prefill_attention=args.prefill_attention)
    if args.chat:
        output = llm.chat([{"role": "user", "content": args.prompt}], params, use_tqdm=False)[0]
    else:
        output = llm.generate(args.prompt, params, use_tqdm=False)[0]
    print(output.outputs[0].text)
    return 0
