"""The per-request limits of ``corral serve`` (limits.py enforces them), apart from the ASGI code so that the CLI
can show their defaults without importing Starlette."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 8 * 1024**2
    max_prompts: int = 256  # prompts in one completions request
    max_sequences: int = 256  # prompts x n: the sequences one request adds to the engine
    max_stop_strings: int = 64

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
