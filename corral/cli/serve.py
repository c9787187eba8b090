"""``corral serve``: an OpenAI-compatible HTTP server over one engine."""

from __future__ import annotations

import argparse
import os
import re

from corral.cli import add_activation_bits_argument
from corral.config import KV_CACHE_DTYPES, QUANTIZATIONS

# A GGUF file's trailing quantisation tag ("Model.Q4_1.gguf", "model-f16.gguf") is not part of its name.
_QUANT_SUFFIX = re.compile(r"[.-](I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="GGUF file or HF directory (default: SmolLM2-135M)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require this bearer token on /v1/*")
    parser.add_argument("--served-model-name", default=None, help="default: the model file's or folder's name")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default="auto", choices=QUANTIZATIONS,
                        help="auto: a GGUF file's own Q4_0/Q4_1/Q8_0 blocks on the C++ kernels, else int8 on fbgemm; none: the exact float path; int8: int8 weights and activations (fbgemm); int4: 4-bit weights; gguf: the file's own blocks")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                        help="auto: int8 beside quantized weights, else the model's dtype; model; int8: 8-bit K/V with a scale per token and head (3.76x the tokens of fp32)")
    add_activation_bits_argument(parser)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--kv-cache-memory", type=int, default=512 * 1024**2, help="bytes for the KV pool")
    parser.add_argument("--max-waiting", type=int, default=None, help="queued requests before 429")
    parser.add_argument("--max-tokens-cap", type=int, default=None, help="reject requests asking for more")
    parser.add_argument("--block-size", type=int, default=4, help="KV tokens per block (a power of two)")
    parser.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    parser.add_argument("--batch-invariant", action="store_true",
                        help="outputs independent of batching (per-token attention; slower long prefills)")
    parser.add_argument("--speculative-config", type=_json_object, default=None,
                        help='speculative decoding as JSON, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\' (vLLM\'s flag)')
    parser.add_argument("--log-level", default="info")


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


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from corral.runtime import EngineArgs, build_engine
    from corral.server.app import build_app
    from corral.server.async_engine import AsyncEngine
    from corral.server.metrics import EngineMetrics

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    engine_args = EngineArgs(
        model=args.model, dtype=args.dtype, quantization=args.quantization, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory=args.kv_cache_memory, enable_prefix_caching=args.enable_prefix_caching,
        block_size=args.block_size, batch_invariant=args.batch_invariant, kv_cache_dtype=args.kv_cache_dtype,
        activation_bits=args.activation_bits,
        speculative_config=args.speculative_config,
    )
    metrics = EngineMetrics()
    engine = AsyncEngine(build_engine(engine_args), observer=metrics)
    name = args.served_model_name or served_name(args.model)
    app = build_app(engine, name, args.api_key, args.max_tokens_cap, metrics, args.max_waiting)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.shutdown()
    return 0
