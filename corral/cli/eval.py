"""``corral eval perplexity|agreement``: quality of a model or a quantized path on held-out text, printed
and optionally written as JSON. Heavy imports stay inside ``run``."""

from __future__ import annotations

import argparse
import json
import os

from corral.cli import (
    QUANTIZATION_HELP,
    HelpFormatter,
    add_activation_bits_argument,
    add_batched_linears_argument,
)
from corral.config import KV_CACHE_DTYPES, QUANTIZATIONS

STDLIB = "stdlib"  # the held-out split of the standard library's docstrings (corral.quantization.corpus)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    metrics = parser.add_subparsers(dest="metric", metavar="METRIC", required=True)
    ppl = metrics.add_parser("perplexity", help="teacher-forced perplexity with a sliding window",
                             formatter_class=HelpFormatter)
    _common(ppl)
    agree = metrics.add_parser("agreement", help="greedy next-token agreement with a reference model",
                               formatter_class=HelpFormatter)
    _common(agree)
    agree.add_argument("--reference", default=None, help="reference model (default: the same model file)")
    agree.add_argument("--reference-quantization", default="none", choices=QUANTIZATIONS,
                       help="the reference's path (default none: exact float)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default: SmolLM2-135M)")
    parser.add_argument("--quantization", default="auto", choices=QUANTIZATIONS, help=QUANTIZATION_HELP)
    parser.add_argument("--kv-cache-dtype", default="model", choices=KV_CACHE_DTYPES[1:],
                        help="K/V format inside each window (default: the model's dtype)")
    add_activation_bits_argument(parser)
    add_batched_linears_argument(parser)
    parser.add_argument("--dataset", default=STDLIB,
                        help="'stdlib' (held-out standard-library docstrings, the default) or a UTF-8 text file")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of the dataset to score")
    parser.add_argument("--window", type=int, default=1024, help="tokens per window")
    parser.add_argument("--stride", type=int, default=None, help="tokens between window starts (default: window / 2)")
    parser.add_argument("--output-json", default=None, metavar="FILE", help="also write the result here")


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from corral.errors import ConfigError
    from corral.models import evaluate
    from corral.quantization.corpus import stdlib_docstrings
    from corral.runtime import EngineArgs, build_engine

    if args.tokens < 2 or args.window < 2:
        raise ConfigError("--tokens and --window must be at least 2")
    if args.dataset == STDLIB:
        text = stdlib_docstrings("heldout")
    elif os.path.isfile(args.dataset):
        with open(args.dataset, encoding="utf-8") as file:
            text = file.read()
    else:
        raise ConfigError(f"--dataset {args.dataset!r} is neither 'stdlib' nor a text file")

    def load(model: str | None, quantization: str, activation_bits: int | None = None, batched_linears: str = "auto"):
        # Windows run as dense prefills with their own scratch K/V: the engine's pool stays minimal.
        engine = build_engine(EngineArgs(model=model, quantization=quantization, max_model_len=16,
                                         kv_cache_memory=4 * 1024**2, activation_bits=activation_bits,
                                         batched_linears=batched_linears))
        context = engine.core.runner.model.config.max_position_embeddings
        if args.window > context:
            raise ConfigError(f"--window {args.window} exceeds the model's context of {context} tokens")
        return engine

    engine = load(args.model, args.quantization, args.activation_bits, args.batched_linears)
    token_ids = engine.tokenizer.encode(text)[: args.tokens]
    stride = args.stride if args.stride is not None else args.window // 2
    windows = evaluate.sliding_windows(token_ids, args.window, stride)
    result: dict[str, object] = {
        "metric": args.metric, "model": args.model or "default", "quantization": args.quantization,
        "kv_cache_dtype": args.kv_cache_dtype, "activation_bits": args.activation_bits,
        "batched_linears": args.batched_linears, "dataset": args.dataset, "window": args.window, "stride": stride,
    }
    with Progress(transient=True) as progress:
        task = progress.add_task(args.metric, total=len(windows))

        def step() -> None:
            progress.advance(task)

        model = engine.core.runner.model
        if args.metric == "perplexity":
            ppl = evaluate.perplexity(model, windows, args.kv_cache_dtype, step)
            result.update(perplexity=ppl.perplexity, num_tokens=ppl.num_tokens, num_windows=ppl.num_windows)
        else:
            reference = load(args.reference if args.reference is not None else args.model, args.reference_quantization)
            if reference.tokenizer.encode(text[:2000]) != engine.tokenizer.encode(text[:2000]):
                raise ConfigError("the model and the reference tokenize the text differently")
            agreement = evaluate.agreement(model, reference.core.runner.model, windows, args.kv_cache_dtype,
                                           on_window=step)
            result.update(reference=args.reference or args.model or "default",
                          reference_quantization=args.reference_quantization, agreement=agreement.rate,
                          num_agreeing=agreement.num_agreeing, num_tokens=agreement.num_tokens)
    print(json.dumps(result, indent=2))
    if args.output_json is not None:
        with open(args.output_json, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
            file.write("\n")
    return 0
