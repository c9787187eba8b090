"""Quality of a fast path against the exact fp32 one, on text no calibration saw: teacher-forced perplexity
on held-out stdlib docstrings and next-token (greedy) agreement, token for token.

    .venv/bin/python bench/quality.py [--tokens 4096] [--window 1024] [--quantization int8]

Windows of ``--window`` tokens are scored independently (no context carried across windows).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from corral.models.calibration import sequence_logits
from corral.quantization.corpus import stdlib_docstrings
from corral.runtime import EngineArgs, build_engine


def score(quantization: str, windows: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
    engine = build_engine(EngineArgs(quantization=quantization, max_model_len=2048, kv_cache_memory=128 * 1024**2))
    model = engine.core.runner.model
    total_nll, count, argmaxes = 0.0, 0, []
    for window in windows:
        logits = sequence_logits(model, window)[:-1]
        targets = torch.tensor(window[1:])
        total_nll += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += len(targets)
        argmaxes.append(logits.argmax(dim=-1))
    return math.exp(total_nll / count), argmaxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--quantization", default="int8")
    args = parser.parse_args()

    engine = build_engine(EngineArgs(quantization="none", max_model_len=64, kv_cache_memory=16 * 1024**2))
    ids = engine.tokenizer.encode(stdlib_docstrings("heldout"))[: args.tokens]
    windows = [ids[i : i + args.window] for i in range(0, len(ids) - 1, args.window)]
    start = time.perf_counter()
    exact_ppl, exact_argmax = score("none", windows)
    fast_ppl, fast_argmax = score(args.quantization, windows)
    agree = sum(int((a == b).sum()) for a, b in zip(exact_argmax, fast_argmax, strict=True))
    total = sum(len(a) for a in exact_argmax)
    print(f"held-out stdlib docstrings, {len(ids)} tokens in windows of {args.window} ({time.perf_counter() - start:.0f} s)")
    print(f"perplexity  none {exact_ppl:.3f}  {args.quantization} {fast_ppl:.3f}  ({fast_ppl / exact_ppl - 1:+.1%})")
    print(f"greedy next-token agreement {agree / total:.1%} ({agree}/{total})")


if __name__ == "__main__":
    main()
