"""The ``corral`` command line; each subcommand lives in its own module. What several subcommands share (the
help formatter, the flags that choose how a model runs) is defined here once."""

from __future__ import annotations

import argparse

from corral.config import (
    ACTIVATION_BITS,
    BATCHED_LINEARS,
    DENSE_MIN_ROWS,
    KV_CACHE_DTYPES,
    PREFILL_ATTENTION,
    QUANTIZATIONS,
)

QUANTIZATION_HELP = (
    "auto: a GGUF file's own Q4_0/Q4_1/Q8_0 blocks on the C++ kernels, else int8 on fbgemm; none: the exact "
    "float path; int8: int8 weights and activations (fbgemm); int4: 4-bit weights; gguf: the file's own blocks"
)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with each option's default appended to its help unless the help already states
    it. None ("derived") and the booleans of on/off switches are left out: printed they would mislead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default is None
            or isinstance(default, bool)
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags that say which model runs and on which weight and K/V formats (serve and generate)."""
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="GGUF file, HF directory or corral quantize directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--quantization", default="auto", choices=QUANTIZATIONS, help=QUANTIZATION_HELP)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                        help="auto: int8 beside quantized weights, else the model's dtype; model: the model's "
                             "dtype; int8: 8-bit K/V with a scale per token and head (3.76x the tokens of fp32)")
    add_activation_bits_argument(parser)
    add_batched_linears_argument(parser)
    parser.add_argument("--prefill-attention", default="auto", choices=PREFILL_ATTENTION,
                        help="the dtype of prefill chunks' attention: model: the model's; bfloat16: q, k, v in bf16 "
                             "(3x faster on AMX); auto: bfloat16 where the CPU has AMX, beside block-quantized float32 weights")


def add_batched_linears_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--batched-linears`` of the commands that run a model (EngineArgs.batched_linears)."""
    parser.add_argument("--batched-linears", default="auto", choices=BATCHED_LINEARS,
                        help=f"block-quantized linears on inputs of {DENSE_MIN_ROWS}+ rows: bf16 also keeps a bf16 "
                             "copy of their weights (2 bytes a parameter) for oneDNN's AMX kernels; packed: the "
                             "block kernels only; auto: bf16 where the CPU has AMX, unless --batch-invariant")


def add_activation_bits_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--activation-bits`` of the commands that run a model (EngineArgs.activation_bits)."""
    parser.add_argument("--activation-bits", type=int, default=None, choices=ACTIVATION_BITS,
                        help="how finely block-quantized weights' kernels round each linear's input: 8 (llama.cpp's, "
                             "the fastest) or 16 (twice the integer work, nearly no rounding error); default: a "
                             "corral quantize directory's own, else 8")
