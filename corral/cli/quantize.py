"""``corral quantize``: write a checkpoint's weights packed (int8, or int4 rounded to nearest, by AWQ or by
GPTQ) into a new directory that ``corral serve --model DIR`` and ``LLM(model=DIR)`` load as stored."""

from __future__ import annotations

import argparse

from corral.config import (
    ACTIVATION_BITS,
    CALIBRATION_TOKENS,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_QUANTIZED_ACTIVATION_BITS,
    DEFAULT_TUNE_STEPS,
    QUANTIZE_METHODS,
)
from corral.errors import QuantizationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="GGUF file or HF directory to quantize (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--method", required=True, choices=QUANTIZE_METHODS,
                        help="int8: per output channel; *-int4: scale and min per group, rounded to nearest (rtn), "
                             "after AWQ's scaling and clipping (awq) or with GPTQ's error compensation (gptq)")
    parser.add_argument("--group-size", type=int, default=64,
                        help="int4 weights per scale and min, 32/64/128/256 dividing every layer's input "
                             "width (default 64: SmolLM2's hidden size 576 has no group of 128); int8 has a "
                             "scale per output channel")
    parser.add_argument("--calibration-tokens", type=int, default=None,
                        help="tokens of the standard library's train-split docstrings seen by awq/gptq "
                             f"(default: {CALIBRATION_TOKENS['gptq-int4']} for gptq, whose Hessians need many, "
                             f"{DEFAULT_CALIBRATION_TOKENS} for the others)")
    parser.add_argument("--tune-steps", type=int, default=DEFAULT_TUNE_STEPS,
                        help="awq/gptq: steps of end-to-end tuning of the int4 groups' scales and mins toward "
                             f"the float model (default {DEFAULT_TUNE_STEPS}; 0 skips it)")
    parser.add_argument("--activation-bits", type=int, default=DEFAULT_QUANTIZED_ACTIVATION_BITS,
                        choices=ACTIVATION_BITS,
                        help="how finely the kernels round each linear's input when the directory runs, and "
                             f"so in the searches (default {DEFAULT_QUANTIZED_ACTIVATION_BITS}; 8 is faster, "
                             "as a GGUF file runs)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the directory to create (must not exist)")


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from corral.compress.quantize import quantize_checkpoint
    from corral.compress.tuning import TuningConfig

    if args.tune_steps < 0:
        raise QuantizationError(f"--tune-steps must be >= 0, got {args.tune_steps}")
    with Progress(transient=True) as progress:
        task = progress.add_task(f"quantize {args.method}", total=None)
        tune_task = None

        def on_layer(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_tuning_step(done: int, total: int) -> None:
            nonlocal tune_task
            if tune_task is None:
                tune_task = progress.add_task("tune scales and mins", total=total)
            progress.update(tune_task, completed=done)

        report = quantize_checkpoint(args.model, args.method, args.out, args.group_size,
                                     args.calibration_tokens, on_layer=on_layer,
                                     tuning=TuningConfig(steps=args.tune_steps), on_tuning_step=on_tuning_step,
                                     activation_bits=args.activation_bits)
    fmt = report.packed_format
    group = "per output channel" if fmt.group_size is None else f"groups of {fmt.group_size}"
    print(f"wrote {report.out}: {fmt.method}, {fmt.bits}-bit {group}, {report.weight_bytes / 2**20:.1f} MiB of weights, "
          f"{fmt.activation_bits}-bit activations")
    if fmt.method in ("awq-int4", "gptq-int4"):
        print(f"output error of the linears on {report.num_calibration_tokens} calibration tokens: "
              f"{report.error_vs_rtn:.2f}x that of round-to-nearest")
    if report.tuning is not None:
        print(f"tuned scales and mins for {report.tuning.steps} steps: KL to the float model "
              f"{report.tuning.kl_before:.4f} -> {report.tuning.kl_after:.4f} on calibration text")
    return 0
