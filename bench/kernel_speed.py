"""Kernel microbenchmarks behind docs/performance.md and docs/quantization.md: the block-quantized linears of
the default model's shape on each set of loops the CPU has, at 8- and 16-bit activations, against the same
linears as int8 on fbgemm; one int4 linear (1536 x 576) alone; the int8 LM head (49152 x 576); and paged
attention per layer (C++ kernel against its torch reference) with an int8 K/V cache.

    .venv/bin/python bench/kernel_speed.py [--repeats 15] [--quick] [--output-json bench/results/kernels.json]

Times are medians of interleaved repeats, in one process; compare them within one run only."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from workloads import provenance

from corral.kernels import cpu_extension, kv_int8
from corral.kernels.paged_attention import paged_attention, paged_attention_reference
from corral.quantization.blockwise import BlockLinear, quantize_int4, quantize_int8
from corral.quantization.int8 import Int8Method, fbgemm_available

# SmolLM2-135M: 30 layers of qkv (576 -> 960), o (576 -> 576), gate/up (576 -> 3072), down (1536 -> 576)
HIDDEN, INTERMEDIATE, NUM_LAYERS = 576, 1536, 30
LAYER_SHAPES = [(960, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]
NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 9, 3, 64, 4
VOCAB_SIZE = 49152


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
    weights = [torch.randn(out, inp) * 0.02 for out, inp in LAYER_SHAPES]
    layers = [BlockLinear(quantize_int4(w, 32), None) for w in weights]
    fbgemm = [Int8Method().quantize(w, None) for w in weights] if fbgemm_available() else None
    one = BlockLinear(quantize_int4(torch.randn(INTERMEDIATE, HIDDEN) * 0.02, 32), None)
    head = BlockLinear(quantize_int8(torch.randn(VOCAB_SIZE, HIDDEN) * 0.02, 32), None)
    extension = cpu_extension.load()
    isas = list(extension.supported_block_linear_isas()) if extension is not None else ["torch reference"]
    isas = [isa for isa in isas if isa != "portable"] or isas[:1]

    def on(isa: str, modules: list, inputs: list[torch.Tensor], times: int = 1) -> Callable[[], None]:
        def run() -> None:
            if extension is not None and isa in isas:
                extension.set_block_linear_isa(isa)
            for _ in range(times):
                for module, x in zip(modules, inputs, strict=True):
                    module.apply(x)
        return run

    rows_out = []
    for activation_bits in (8, 16):
        for module in [*layers, one, head]:
            module.activation_bits = activation_bits
        for num_rows in (1, 4, 8, 32):
            inputs = [torch.randn(num_rows, in_features) for _, in_features in LAYER_SHAPES]
            runs = {isa: on(isa, layers, inputs, NUM_LAYERS) for isa in isas}
            if fbgemm is not None and activation_bits == 8:  # int8 weights, int8 activations per row
                runs["fbgemm"] = on("fbgemm", fbgemm, inputs, NUM_LAYERS)
            rows_out += [{"kernel": f"120 {'int8' if isa == 'fbgemm' else 'int4'} linears (default model)",
                          "activation_bits": activation_bits, "rows": num_rows, "isa": isa, "ms": ms}
                         for isa, ms in median_ms(runs, repeats).items()]
        for name, module, all_rows in (("one int4 linear 1536 x 576", one, (1, 32)),
                                       ("int8 LM head 49152 x 576", head, (1, 8))):
            for num_rows in all_rows:
                x = [torch.randn(num_rows, HIDDEN)]
                times = median_ms({isa: on(isa, [module], x) for isa in isas}, repeats)
                rows_out += [{"kernel": name, "activation_bits": activation_bits, "rows": num_rows, "isa": isa,
                              "ms": ms} for isa, ms in times.items()]
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
    parser.add_argument("--quick", action="store_true", help="3 repeats: checks the script, not the numbers")
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/kernels.json"))
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    report = provenance()
    report["host"].update(threads=torch.get_num_threads(), kernels=cpu_extension.build_problem() or "built")
    report.update(repeats=repeats, block_linear=block_linears(repeats), paged_attention=attention(repeats))
    host = report["host"]
    print(f"{report['date']}, {host['cpu']}, flags {', '.join(host['simd_flags'])}, {host['threads']} threads, "
          f"medians of {repeats} interleaved repeats")
    for row in report["block_linear"]:
        print(f"{row['kernel']}, {row['activation_bits']}-bit activations, {row['rows']} rows, {row['isa']}: "
              f"{row['ms']:.3f} ms")
    for row in report["paged_attention"]:
        print(f"{row['kernel']}, context {row['context']}, {row['rows']} rows, {row['implementation']}: "
              f"{row['us']:.0f} us")
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
