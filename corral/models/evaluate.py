"""How much a quantized path changes a model, on text no calibration saw: teacher-forced perplexity with a
sliding window, and greedy next-token agreement with a reference model, position by position.

Every window is one dense prefill (``models.calibration.sequence_logits``), so the numbers measure the
weights and the K/V format, not batching or scheduling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from corral.errors import ConfigError
from corral.models.calibration import sequence_logits


@dataclass(frozen=True)
class Window:
    """``token_ids[start:end]`` of the text, of which the last ``num_scored`` targets count (the rest is
    context already scored by the previous window)."""

    token_ids: list[int]
    num_scored: int


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    num_tokens: int  # scored targets
    num_windows: int


@dataclass(frozen=True)
class Agreement:
    rate: float
    num_agreeing: int
    num_tokens: int


def sliding_windows(token_ids: list[int], window: int, stride: int) -> list[Window]:
    """Windows of ``window`` tokens every ``stride`` tokens, each scoring only the targets past the
    previous window's end; every target after the first token is scored once. Windows overlap
    (``stride < window``): a window's first token has no prediction inside it."""
    if not 0 < stride < window:
        raise ConfigError(f"stride must be in (0, window), got stride {stride} and window {window}")
    if len(token_ids) < 2:
        raise ConfigError("the evaluation text has fewer than 2 tokens")
    windows, scored_until = [], 1  # target 0 (the first token) has no prediction
    for start in range(0, len(token_ids) - 1, stride):
        end = min(start + window, len(token_ids))
        windows.append(Window(token_ids[start:end], end - scored_until))
        scored_until = end
        if end == len(token_ids):
            break
    return windows


def _scored_logits(
    model: torch.nn.Module, windows: list[Window], kv_cache_dtype: str, on_window: Callable[[], None] | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each window: the logits ``[num_scored, vocab]`` and their target ids."""
    for window in windows:
        logits = sequence_logits(model, window.token_ids, kv_cache_dtype)[:-1].float()
        targets = torch.tensor(window.token_ids[1:])
        yield logits[-window.num_scored :], targets[-window.num_scored :]
        if on_window is not None:
            on_window()


def perplexity(
    model: torch.nn.Module,
    windows: list[Window],
    kv_cache_dtype: str = "model",
    on_window: Callable[[], None] | None = None,
) -> Perplexity:
    total_nll, count = 0.0, 0
    for logits, targets in _scored_logits(model, windows, kv_cache_dtype, on_window):
        total_nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
    return Perplexity(math.exp(total_nll / count), count, len(windows))


def agreement(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    windows: list[Window],
    kv_cache_dtype: str = "model",
    on_window: Callable[[], None] | None = None,
) -> Agreement:
    """The share of positions where both models' greedy next token is the same, on the same context (the
    reference keeps K/V in its own dtype)."""
    agreeing = count = 0
    scored = zip(
        _scored_logits(model, windows, kv_cache_dtype, None),
        _scored_logits(reference, windows, "model", on_window),
        strict=True,
    )
    for (logits, targets), (reference_logits, _) in scored:
        agreeing += int((logits.argmax(dim=-1) == reference_logits.argmax(dim=-1)).sum())
        count += targets.numel()
    return Agreement(agreeing / count, agreeing, count)
