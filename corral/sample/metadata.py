"""SamplingMetadata: the per-step tensors the sampler reads, built once per engine step.

The builder is on the hot path of every step, so it is shaped around the common case: a batch that
uses only default parameters builds one small tensor (temperature) and leaves every optional field
``None``. Each optional feature (top-k, top-p, min-p, penalties, banned tokens, logprobs) costs work
only in steps where at least one row asks for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from corral.sample.params import SamplingParams


@dataclass(frozen=True)
class SamplingMetadata:
    """What the sampler needs for one step of ``B`` rows over a vocabulary of ``vocab_size`` tokens.

    Every optional tensor is ``None`` when no row in the batch uses the feature; rows that do not use
    it hold the neutral value (top_k = vocab_size, top_p = 1, min_p = 0, penalties 1 / 0 / 0).
    Filters (top-k, top-p, min-p) and generators only matter for random rows, so greedy rows never
    switch them on; penalties and banned tokens apply to greedy rows too.
    """

    vocab_size: int
    # [B] float32; greedy rows hold exactly 0.0 (the sampler never divides by it).
    temperature: torch.Tensor
    all_greedy: bool
    all_random: bool
    # [B] int64 in [1, vocab_size]; vocab_size means "no top-k" for that row.
    top_k: torch.Tensor | None
    # Largest top_k among rows that use it, known on the host so the sampler can call topk() without
    # reading a device tensor. 0 when top_k is None.
    max_top_k: int
    top_p: torch.Tensor | None  # [B] float32 in (0, 1]
    min_p: torch.Tensor | None  # [B] float32 in [0, 1]
    # Row index -> that request's generator, for seeded random rows only. Each generator must live on
    # the same device as the logits.
    generators: dict[int, torch.Generator]
    repetition_penalties: torch.Tensor | None  # [B] float32, 1.0 = off
    presence_penalties: torch.Tensor | None  # [B] float32, 0.0 = off
    frequency_penalties: torch.Tensor | None  # [B] float32, 0.0 = off
    # [B, max_prompt_len] int64, padded with vocab_size (an id no logit has). Only built when some row
    # uses a repetition penalty; rows without one are left empty (all padding).
    prompt_token_ids: torch.Tensor | None
    # [B, max_output_len] int64, padded with vocab_size. Only built when some row uses any penalty.
    output_token_ids: torch.Tensor | None
    # [2, K] int64: (row, token id) pairs whose logit is forced to -inf this step (EOS and stop ids of
    # rows below min_tokens). A sparse mask: K is tiny next to B * V, so no dense [B, V] mask is built.
    banned_token_coords: torch.Tensor | None
    # Largest ``SamplingParams.logprobs`` in the batch; None when no row asks for logprobs.
    max_num_logprobs: int | None
    # Rows under a grammar ([R] int64) and the tokens each may produce next ([R, ceil(V / 32)] int32 bitmask,
    # see ``ops.apply_token_bitmask_``), both on the host; None when no row is constrained.
    allowed_token_bitmask: tuple[torch.Tensor, torch.Tensor] | None = None
    # ([2, K] int64 (row, token id) pairs, [K] float32 biases) added to the logits (logit_bias); None when no
    # row has one.
    logit_bias: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_rows(self) -> int:
        return self.temperature.shape[0]

    @property
    def no_penalties(self) -> bool:
        return (
            self.repetition_penalties is None
            and self.presence_penalties is None
            and self.frequency_penalties is None
        )


def build_sampling_metadata(
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
    banned_token_ids: Sequence[Sequence[int]],
    vocab_size: int,
    device: torch.device,
    allowed_token_bitmask: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SamplingMetadata:
    """Build the metadata for one step; row ``i`` of every sequence describes the same request.

    ``generators[i]`` must be set for every seeded row (the engine creates it from ``params[i].seed``
    and keeps it across steps). ``banned_token_ids[i]`` are ids row ``i`` must not produce this step;
    ``allowed_token_bitmask`` (rows, bitmask), the only ids the grammar-constrained rows may produce.
    """
    num_rows = len(params)
    assert len(generators) == num_rows, f"{len(generators)} generators for {num_rows} rows"
    assert len(prompt_token_ids) == num_rows, f"{len(prompt_token_ids)} prompts for {num_rows} rows"
    assert len(output_token_ids) == num_rows, f"{len(output_token_ids)} outputs for {num_rows} rows"
    assert len(banned_token_ids) == num_rows, f"{len(banned_token_ids)} banned lists for {num_rows} rows"
    assert vocab_size > 0

    greedy = [p.is_greedy for p in params]
    temperature = torch.tensor(
        [0.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)],
        dtype=torch.float32,
        device=device,
    )
    # Rows whose filters and randomness matter; greedy rows ignore them.
    random_params = [p for p, g in zip(params, greedy, strict=True) if not g]

    top_k, max_top_k = _build_top_k(params, greedy, random_params, vocab_size, device)
    top_p = None
    if any(p.top_p < 1.0 for p in random_params):
        top_p = _row_tensor([1.0 if g else p.top_p for p, g in zip(params, greedy, strict=True)], device)
    min_p = None
    if any(p.min_p > 0.0 for p in random_params):
        min_p = _row_tensor([0.0 if g else p.min_p for p, g in zip(params, greedy, strict=True)], device)

    seeded_generators: dict[int, torch.Generator] = {}
    for i, (p, gen) in enumerate(zip(params, generators, strict=True)):
        assert p.seed is None or gen is not None, f"row {i} is seeded but has no generator"
        if gen is not None and not greedy[i]:
            seeded_generators[i] = gen

    rep = pres = freq = prompt_ids = output_ids = None
    if any(p.has_penalties for p in params):
        if any(p.repetition_penalty != 1.0 for p in params):
            rep = _row_tensor([p.repetition_penalty for p in params], device)
            # Only the repetition penalty looks at the prompt; skip the rows that do not use it.
            prompt_ids = _pad_rows(
                [
                    t if p.repetition_penalty != 1.0 else ()
                    for p, t in zip(params, prompt_token_ids, strict=True)
                ],
                vocab_size,
                device,
            )
        if any(p.presence_penalty != 0.0 for p in params):
            pres = _row_tensor([p.presence_penalty for p in params], device)
        if any(p.frequency_penalty != 0.0 for p in params):
            freq = _row_tensor([p.frequency_penalty for p in params], device)
        output_ids = _pad_rows(
            [t if p.has_penalties else () for p, t in zip(params, output_token_ids, strict=True)],
            vocab_size,
            device,
        )

    return SamplingMetadata(
        vocab_size=vocab_size,
        temperature=temperature,
        all_greedy=all(greedy),
        all_random=not any(greedy),
        top_k=top_k,
        max_top_k=max_top_k,
        top_p=top_p,
        min_p=min_p,
        generators=seeded_generators,
        repetition_penalties=rep,
        presence_penalties=pres,
        frequency_penalties=freq,
        prompt_token_ids=prompt_ids,
        output_token_ids=output_ids,
        banned_token_coords=_banned_coords(banned_token_ids, vocab_size, device),
        max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
        allowed_token_bitmask=allowed_token_bitmask,
        logit_bias=_logit_bias(params, vocab_size, device),
    )


def _build_top_k(
    params: Sequence[SamplingParams],
    greedy: Sequence[bool],
    random_params: Sequence[SamplingParams],
    vocab_size: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, int]:
    # A top_k at or above the vocabulary keeps everything, so it counts as "off".
    if not any(0 < p.top_k < vocab_size for p in random_params):
        return None, 0
    ks = [
        p.top_k if (not g and 0 < p.top_k < vocab_size) else vocab_size
        for p, g in zip(params, greedy, strict=True)
    ]
    max_top_k = max(k for k in ks if k < vocab_size)
    return torch.tensor(ks, dtype=torch.int64, device=device), max_top_k


def _row_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Ragged rows of token ids -> [len(rows), max_len] int64 padded with ``pad_id``, without a per-row
    tensor: one flat numpy array scattered through a boolean mask (row-major, like the flattening)."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lens.max()) if len(rows) else 0
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lens.sum()))
    out[np.arange(width) < lens[:, None]] = flat
    return torch.from_numpy(out).to(device)


def _banned_coords(
    banned_token_ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> torch.Tensor | None:
    if not any(len(ids) for ids in banned_token_ids):
        return None
    lens = np.fromiter((len(ids) for ids in banned_token_ids), dtype=np.int64, count=len(banned_token_ids))
    cols = np.fromiter(itertools.chain.from_iterable(banned_token_ids), dtype=np.int64, count=int(lens.sum()))
    assert cols.min() >= 0 and cols.max() < vocab_size, "banned token id outside the vocabulary"
    rows = np.repeat(np.arange(len(banned_token_ids), dtype=np.int64), lens)
    return torch.from_numpy(np.stack([rows, cols])).to(device)


def _logit_bias(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not any(p.logit_bias for p in params):
        return None
    entries = [(row, token_id, bias) for row, p in enumerate(params) for token_id, bias in p.logit_bias]
    assert all(t < vocab_size for _, t, _ in entries), "logit_bias token id outside the vocabulary"
    coords = torch.tensor([[row for row, _, _ in entries], [t for _, t, _ in entries]], dtype=torch.int64)
    biases = torch.tensor([b for _, _, b in entries], dtype=torch.float32)
    return coords.to(device), biases.to(device)


__all__ = ["SamplingMetadata", "build_sampling_metadata"]
