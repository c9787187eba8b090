"""Kernel microbenchmarks behind docs/performance.md: the block-quantized linears of the default model's shape
on each set of loops the CPU has, at 8- and 16-bit activations, and paged attention per layer (C++ kernel
against its torch reference) with an int8 K/V cache.

    .venv/bin/python bench/kernels.py [--repeats 15] [--output-json bench/results/kernels.json]

Times are medians of interleaved repeats, in one process; compare them within one run only."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from corral.kernels import cpu_extension, kv_int8
from corral.kernels.paged_attention import paged_attention, paged_attention_reference
from corral.platform import cpu_flags
from corral.quantization.blockwise import BlockLinear, quantize_int4

# SmolLM2-135M: 30 layers of qkv (576 -> 960), o (576 -> 576), gate/up (576 -> 3072), down (1536 -> 576)
HIDDEN, INTERMEDIATE, NUM_LAYERS = 576, 1536, 30
LAYER_SHAPES = [(960, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]
NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 9, 3, 64, 4


def median_ms(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each function's median wall time, calls interleaved so drift in the host hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for fn in functions.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def block_linears(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    layers = [BlockLinear(quantize_int4(torch.randn(out, inp) * 0.02, 32), None) for out, inp in LAYER_SHAPES]
    extension = cpu_extension.load()
    isas = list(extension.supported_block_linear_isas()) if extension is not None else ["torch reference"]
    rows_out = []
    for activation_bits in (8, 16):
        for layer in layers:
            layer.activation_bits = activation_bits
        for num_rows in (1, 4, 8, 32):
            inputs = [torch.randn(num_rows, in_features) for _, in_features in LAYER_SHAPES]

            def model_linears(isa: str, inputs: list[torch.Tensor] = inputs) -> Callable[[], None]:
                def run() -> None:
                    if extension is not None:
                        extension.set_block_linear_isa(isa)
                    for _ in range(NUM_LAYERS):
                        for layer, x in zip(layers, inputs, strict=True):
                            layer.apply(x)
                return run

            times = median_ms({isa: model_linears(isa) for isa in isas if isa != "portable"} or
                              {isas[0]: model_linears(isas[0])}, repeats)
            rows_out += [{"kernel": "120 int4 linears (default model)", "activation_bits": activation_bits,
                          "rows": num_rows, "isa": isa, "ms": ms} for isa, ms in times.items()]
    if extension is not None:
        extension.set_block_linear_isa(isas[-1])
    return rows_out


def attention(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    rows_out = []
    for context in (300, 600):
        num_blocks = -(-context // BLOCK_SIZE)
        width = kv_int8.row_width(HEAD_SIZE)
        key_cache = torch.zeros(num_blocks * BLOCK_SIZE, NUM_KV_HEADS, width, dtype=torch.int8)
        value_cache = torch.zeros_like(key_cache)
        slots = torch.arange(context)
        kv_int8.write_kv(key_cache, slots, torch.randn(context, NUM_KV_HEADS, HEAD_SIZE))
        kv_int8.write_kv(value_cache, slots, torch.randn(context, NUM_KV_HEADS, HEAD_SIZE))
        block_table = torch.arange(num_blocks).unsqueeze(0)
        for num_rows in (1, 8):  # a decode; a draft check of 8 rows of one sequence
            query = torch.randn(num_rows, NUM_HEADS, HEAD_SIZE)
            seq_of_query = torch.zeros(num_rows, dtype=torch.int64)
            context_lens = torch.arange(context - num_rows + 1, context + 1)
            args = (query, key_cache, value_cache, block_table, seq_of_query, context_lens, BLOCK_SIZE, HEAD_SIZE**-0.5)
            times = median_ms({"C++ kernel": lambda a=args: paged_attention(*a),
                               "torch reference": lambda a=args: paged_attention_reference(*a)}, repeats)
            rows_out += [{"kernel": "paged attention, one layer, int8 K/V", "context": context, "rows": num_rows,
                          "implementation": name, "us": ms * 1e3} for name, ms in times.items()]
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/kernels.json"))
    args = parser.parse_args()
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"})
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpu_flags": flags, "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "kernels": cpu_extension.build_problem() or "built"},
        "block_linear": block_linears(args.repeats),
        "paged_attention": attention(args.repeats),
    }
    print(f"{report['date']}, flags {', '.join(flags)}, {report['host']['threads']} threads")
    for row in report["block_linear"]:
        print(f"{row['kernel']}, {row['activation_bits']}-bit activations, {row['rows']} rows, {row['isa']}: "
              f"{row['ms']:.2f} ms")
    for row in report["paged_attention"]:
        print(f"{row['kernel']}, context {row['context']}, {row['rows']} rows, {row['implementation']}: "
              f"{row['us']:.0f} us")
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
