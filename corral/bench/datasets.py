"""Prompts for the serving benchmark: random token ids of a given length, or built-in text prompts."""

from __future__ import annotations

import random

SENTENCE = (
    "The history of science shows that careful measurement and honest reporting move knowledge forward "
    "faster than any single brilliant idea."
)


def random_token_prompts(
    num_prompts: int, input_len: int, vocab_size: int, seed: int = 0, first_id: int = 100
) -> list[list[int]]:
    """Prompts of exactly ``input_len`` token ids, avoiding the low ids where special tokens live."""
    rng = random.Random(seed)
    return [[rng.randrange(first_id, vocab_size) for _ in range(input_len)] for _ in range(num_prompts)]


def builtin_prompts(num_prompts: int) -> list[str]:
    """Workload A of shared/MACHINE.md: short essay prompts of 31 to 94 tokens."""
    return [
        f"Write a detailed essay about topic number {i}: " + " ".join([SENTENCE] * (i % 4 + 1))
        for i in range(num_prompts)
    ]
