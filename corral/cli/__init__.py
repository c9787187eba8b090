"""The ``corral`` command line; each subcommand lives in its own module. Arguments shared by several
subcommands are defined here once."""

from __future__ import annotations

import argparse

from corral.config import ACTIVATION_BITS


def add_activation_bits_argument(parser: argparse.ArgumentParser) -> None:
    """``--activation-bits`` of the commands that run a model (EngineArgs.activation_bits)."""
    parser.add_argument("--activation-bits", type=int, default=None, choices=ACTIVATION_BITS,
                        help="how finely block-quantized weights' kernels round each linear's input: 8 (llama.cpp's, "
                             "the fastest) or 16 (twice the integer work, nearly no rounding error); default: a "
                             "corral quantize directory's own, else 8")
