"""``corral bench serve``: load-test any OpenAI-compatible server and report latency percentiles."""

from __future__ import annotations

import argparse

from corral.cli import HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    serve = sub.add_parser("serve", help="benchmark a running OpenAI-compatible server",
                           formatter_class=HelpFormatter)
    serve.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (without /v1)")
    serve.add_argument("--model", required=True, help="model name the server serves")
    serve.add_argument("--num-prompts", type=int, default=64, help="requests to send")
    serve.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf: all at once")
    serve.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight")
    serve.add_argument("--dataset", choices=["random", "builtin"], default="random",
                       help="random: random token ids of --input-len; builtin: a fixed set of text prompts")
    serve.add_argument("--input-len", type=int, default=128, help="prompt tokens (random dataset)")
    serve.add_argument("--output-len", type=int, default=128, help="tokens to generate per request (EOS ignored)")
    serve.add_argument("--vocab-size", type=int, default=49152, help="token id range of the random dataset")
    serve.add_argument("--api-key", default=None, metavar="KEY", help="bearer token to send")
    serve.add_argument("--seed", type=int, default=0, help="seed of the dataset and the arrival times")
    serve.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    serve.add_argument("--result-json", default=None, metavar="FILE", help="also write the report here")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from corral.bench.datasets import builtin_prompts, random_token_prompts
    from corral.bench.serve import run_benchmark
    from corral.errors import ConfigError

    if args.num_prompts < 1 or args.output_len < 1 or args.input_len < 1:
        raise ConfigError("--num-prompts, --input-len and --output-len must be >= 1")
    if args.dataset == "random":
        prompts = random_token_prompts(args.num_prompts, args.input_len, args.vocab_size, args.seed)
    else:
        prompts = builtin_prompts(args.num_prompts)
    report = asyncio.run(
        run_benchmark(
            args.base_url, args.model, prompts, args.output_len, args.request_rate, args.max_concurrency,
            args.api_key, args.seed, args.timeout,
        )
    )
    print(report.format())
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if report.num_failed < report.num_requests else 1
