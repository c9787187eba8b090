"""``corral plan``: memory, latency per batch, replicas and cost of serving a model on given hardware
(docs/planner.md). Imports neither torch nor the engine, so it answers in well under a second."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="PATH|NAME",
                       help="a .gguf file, a config.json or a directory holding one, or a built-in name "
                            "(`--list-models`); default: SmolLM2-135M-Instruct's Q4_1 file")
    model.add_argument("--format", default="auto", metavar="FORMAT",
                       help="weights: fp32, bf16, fp16, fp8, int8, int4 (see --group-size), a GGUF type (q4_0, "
                            "q4_k, ...) or file (a GGUF file's own types); auto: file for a GGUF file, else "
                            "int8 on a CPU and the checkpoint's dtype on a GPU")
    model.add_argument("--group-size", type=int, default=None, metavar="N", help="int4 group size: 32, 64, 128 or 256 (default: 32)")
    model.add_argument("--kv-dtype", default="auto", metavar="DTYPE",
                       help="KV cache: auto (int8 beside quantized weights on a CPU, else the model's), model, "
                            "fp32, bf16, fp16, fp8, int8 (corral's: a float32 scale per token and head)")
    model.add_argument("--context", type=int, default=None, metavar="TOKENS",
                       help="context length for the concurrency figure (default: the model's, capped at 4096)")
    model.add_argument("--list-models", action="store_true", help="print the built-in models and exit")
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--hardware", default=None, metavar="NAME",
                    help="a row of the table (`--list-hardware`); default: local, this machine's CPU row")
    hw.add_argument("--list-hardware", action="store_true", help="print the hardware table and exit")
    hw.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel devices per replica")
    hw.add_argument("--pp", type=int, default=1, metavar="N", help="pipeline-parallel stages per replica")
    hw.add_argument("--replicas", type=int, default=None, metavar="N", help="replicas to plan (default: as many as --rps needs, else 1)")
    hw.add_argument("--price-per-hour", type=float, default=None, metavar="USD",
                    help="price of one device per hour (default: the table's indicative price)")
    traffic = parser.add_argument_group("traffic and SLOs")
    traffic.add_argument("--rps", type=float, default=None, metavar="X", help="requests per second to serve")
    traffic.add_argument("--prompt-len", default="256", metavar="N|LOW:HIGH", help="prompt tokens, fixed or uniform")
    traffic.add_argument("--output-len", default="128", metavar="N|LOW:HIGH", help="output tokens, fixed or uniform")
    traffic.add_argument("--slo-ttft-ms", type=float, default=2000.0, metavar="MS", help="time to first token")
    traffic.add_argument("--slo-tpot-ms", type=float, default=100.0, metavar="MS", help="time per output token")
    traffic.add_argument("--headroom", type=float, default=0.2, metavar="FRACTION",
                         help="share of each replica's SLO batch kept free for bursts")
    engine = parser.add_argument_group("engine and model assumptions")
    engine.add_argument("--block-size", type=int, default=None, metavar="TOKENS", help="KV block size in tokens (default: corral's, 4)")
    engine.add_argument("--kv-cache-memory", type=int, default=None, metavar="BYTES",
                        help="the KV pool's bytes, as the engine's kv_cache_memory (default: memory x "
                             "--memory-utilization - weights - activation peak - overhead, vLLM's rule)")
    engine.add_argument("--memory-utilization", type=float, default=None, metavar="FRACTION",
                        help="share of device memory the engine may use (default: 0.9, vLLM's)")
    engine.add_argument("--overhead-bytes", type=int, default=None, metavar="BYTES",
                        help="memory outside weights, activations and KV (default: 353 MiB on a CPU, 1.5 GiB on a GPU)")
    engine.add_argument("--max-num-seqs", type=int, default=None, metavar="N",
                        help="the scheduler's cap on running sequences (default: corral's 64 on a CPU, vLLM's 256 on a GPU)")
    engine.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                        help="tokens per step (default: corral's 512 on a CPU, vLLM's 8192 on a GPU)")
    engine.add_argument("--bandwidth-efficiency", type=float, default=None, metavar="FRACTION",
                        help="share of peak bandwidth reached (default: 0.6, sources in docs/planner.md)")
    engine.add_argument("--compute-efficiency", type=float, default=None, metavar="FRACTION",
                        help="share of peak matrix throughput reached (default: 0.6 on a CPU, 0.5 on a GPU)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from corral.planner.plan import PlanRequest, build_plan
    from corral.planner.report import plan_to_dict, print_plan

    if args.list_models or args.list_hardware:
        _print_tables(args.list_models, args.list_hardware, Console())
        return 0
    kwargs = {} if args.block_size is None else {"block_size": args.block_size}
    if args.memory_utilization is not None:
        kwargs["memory_utilization"] = args.memory_utilization
    request = PlanRequest(
        model=args.model, format=args.format, group_size=args.group_size, kv_dtype=args.kv_dtype,
        context_len=args.context, hardware=args.hardware, tensor_parallel_size=args.tp,
        pipeline_parallel_size=args.pp, replicas=args.replicas, requests_per_s=args.rps,
        prompt_len=args.prompt_len, output_len=args.output_len, slo_ttft_ms=args.slo_ttft_ms,
        slo_tpot_ms=args.slo_tpot_ms, headroom=args.headroom, kv_cache_memory=args.kv_cache_memory,
        overhead_bytes=args.overhead_bytes,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        bandwidth_efficiency=args.bandwidth_efficiency, compute_efficiency=args.compute_efficiency,
        price_per_hour=args.price_per_hour,
        **kwargs,
    )
    plan = build_plan(request)
    if args.json:
        print(json.dumps(plan_to_dict(plan), indent=2))
    else:
        print_plan(plan, Console())
    return 0


def _print_tables(models: bool, hardware: bool, console: Console) -> None:
    from rich.table import Table

    from corral.planner.hardware import HARDWARE, local_cpu_name
    from corral.planner.models import BUILTIN_MODELS

    if models:
        table = Table("name", "parameters", "layers", "heads / KV heads", "context", "source", title="Built-in models")
        for m in BUILTIN_MODELS.values():
            table.add_row(m.name, f"{m.num_parameters() / 1e9:.2f} B", str(m.num_hidden_layers),
                          f"{m.num_attention_heads} / {m.num_key_value_heads}", str(m.max_position_embeddings), m.source)
        console.print(table)
    if hardware:
        table = Table("name", "memory GiB", "GB/s", "TFLOP/s (dense)", "$/h", "source", title="Hardware")
        for h in HARDWARE.values():
            flops = ", ".join(f"{k} {v / 1e12:g}" for k, v in h.peak_flops.items())
            name = h.name + (" (local)" if h.name == local_cpu_name() else "")
            table.add_row(name, f"{h.memory_bytes / 2**30:g}", f"{h.bandwidth_bytes_per_s / 1e9:,.0f}", flops,
                          f"{h.price_per_hour:g}", f"{h.spec_source}; price {h.price_source}")
        console.print(table)
