"""``corral serve``: an OpenAI-compatible HTTP server over one engine."""

from __future__ import annotations

import argparse
import os
import re

from corral.cli import add_model_arguments
from corral.server.limits_config import RequestLimits

# A GGUF file's trailing quantisation tag ("Model.Q4_1.gguf", "model-f16.gguf") is not part of its name.
_QUANT_SUFFIX = re.compile(r"[.-](I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    add_model_arguments(model)
    model.add_argument("--served-model-name", default=None, metavar="NAME",
                       help="the name clients send as `model` (default: the model file's or folder's name)")
    model.add_argument("--dtype", default="auto", help="auto: float32 on CPU, bfloat16 on CUDA; or a torch dtype name")

    engine = parser.add_argument_group("engine: scheduling and the KV cache")
    engine.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                        help="longest prompt plus output (default: the model's context, capped at 4096)")
    engine.add_argument("--max-num-seqs", type=int, default=64, metavar="N", help="sequences in one batch")
    engine.add_argument("--max-num-batched-tokens", type=int, default=512, metavar="TOKENS",
                        help="tokens computed in one step (prompt chunks, decodes and drafts together)")
    engine.add_argument("--kv-cache-memory", type=int, default=512 * 1024**2, metavar="BYTES",
                        help="bytes for the KV pool (default: 536870912, 512 MiB)")
    engine.add_argument("--block-size", type=int, default=4, metavar="TOKENS", help="KV tokens per block (a power of two)")
    engine.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false",
                        help="do not reuse the KV blocks of earlier prompts' shared prefixes")
    engine.add_argument("--batch-invariant", action="store_true",
                        help="outputs independent of batching (per-token attention; slower long prefills)")
    engine.add_argument("--speculative-config", type=_json_object, default=None, metavar="JSON",
                        help='speculative decoding, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\' '
                             "(vLLM's flag; docs/speculative-decoding.md)")

    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind")
    server.add_argument("--port", type=int, default=8000, help="port to bind")
    server.add_argument("--api-key", default=None, metavar="KEY", help="require this bearer token on /v1/*")
    server.add_argument("--max-waiting", type=int, default=None, metavar="N",
                        help="queued requests past which new ones get 429 (default: no limit)")
    server.add_argument("--max-tokens-cap", type=int, default=None, metavar="TOKENS",
                        help="refuse requests asking for more max_tokens (default: up to the context)")
    limits = parser.add_argument_group("server: bounds on one request (a 400 naming the limit; 413 for the body)")
    limits.add_argument("--max-request-bytes", type=_positive_int, default=RequestLimits.max_body_bytes,
                        metavar="BYTES", help="largest request body, refused while it arrives (default: 8 MiB)")
    limits.add_argument("--max-prompts-per-request", type=_positive_int, default=RequestLimits.max_prompts,
                        metavar="N", help="prompts in one completions request")
    limits.add_argument("--max-sequences-per-request", type=_positive_int, default=RequestLimits.max_sequences,
                        metavar="N", help="prompts x n in one request")
    limits.add_argument("--max-stop-strings", type=_positive_int, default=RequestLimits.max_stop_strings,
                        metavar="N", help="stop strings in one request, and bad words")
    server.add_argument("--log-level", default="info", type=str.lower, choices=("critical", "error", "warning", "info", "debug"), help="uvicorn's and corral's log level")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def served_name(model: str | None) -> str:
    from corral.loader.default_model import default_model_path

    path = model or default_model_path()
    name = os.path.basename(os.path.normpath(path))
    if name.endswith(".gguf"):
        name = _QUANT_SUFFIX.sub("", name.removesuffix(".gguf"))
    return name


def build_server(args: argparse.Namespace):
    """The FastAPI app, the AsyncEngine behind it and its metrics, from parsed ``corral serve`` arguments (the
    engine loads on its own thread). Shared by ``run`` and by a Ray Serve replica (corral/deploy/ray_replica.py),
    so a replica serves exactly what ``corral serve`` does."""
    from corral.runtime import EngineArgs, build_engine
    from corral.server.app import build_app
    from corral.server.async_engine import AsyncEngine
    from corral.server.metrics import EngineMetrics

    engine_args = EngineArgs(
        model=args.model, dtype=args.dtype, quantization=args.quantization, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory=args.kv_cache_memory, enable_prefix_caching=args.enable_prefix_caching,
        block_size=args.block_size, batch_invariant=args.batch_invariant, kv_cache_dtype=args.kv_cache_dtype,
        activation_bits=args.activation_bits, batched_linears=args.batched_linears,
        prefill_attention=args.prefill_attention,
        speculative_config=args.speculative_config,
    )
    metrics = EngineMetrics()
    engine = AsyncEngine(lambda: build_engine(engine_args), observer=metrics)  # built on its own thread
    name = args.served_model_name or served_name(args.model)
    limits = RequestLimits(args.max_request_bytes, args.max_prompts_per_request, args.max_sequences_per_request,
                           args.max_stop_strings)
    app = build_app(engine, name, args.api_key, args.max_tokens_cap, metrics, args.max_waiting, limits)
    return app, engine, metrics


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from corral.server.app import UVICORN_OPTIONS

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app, engine, _ = build_server(args)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, **UVICORN_OPTIONS)
    finally:
        engine.shutdown()
    return 0
