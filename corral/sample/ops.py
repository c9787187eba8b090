"""Batched filtering and sampling ops: temperature, top-k, top-p, min-p, and the random draw (inverse CDF).

All functions take and return [B, V] float tensors and never read a device value on the host, so
they run without a device sync (except top-p's CPU path, where a sync costs nothing). Filtering writes -inf
into the logits of removed tokens.
"""

from __future__ import annotations

import numpy as np
import torch

_NEG_INF = float("-inf")
_NUCLEUS_CANDIDATES = 256  # top-p looks at each row's 256 most likely tokens first (CPU)


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """The first index of each row's maximum (argmax's ties and NaNs): ``max(dim)`` is about 2.5x faster
    than ``argmax`` on [32, 49152] float32 on the CPU, and it runs every greedy step."""
    return logits.max(dim=-1).indices


def apply_token_bitmask_(logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """-inf, in place, into every token of ``rows`` that their bitmask disallows: ``bitmask`` is
    [len(rows), ceil(V' / 32)] int32, bit ``t % 32`` of word ``t // 32`` set where token ``t`` is allowed (the
    layout of llguidance and xgrammar). Tokens past the bitmask's width (a vocabulary padded beyond the
    tokenizer's) are disallowed. One row at a time: a [B, V] op would wake the thread pool for ~50k elements."""
    # Little-endian int32 words hold the bits in token order, byte by byte: numpy unpacks them in one pass.
    bits = np.unpackbits(bitmask.cpu().numpy().view(np.uint8), axis=1, bitorder="little")  # [R, 32 * words]
    vocab_size = logits.shape[1]
    disallowed = np.ones((bits.shape[0], vocab_size), dtype=bool)
    width = min(vocab_size, bits.shape[1])
    disallowed[:, :width] = bits[:, :width] == 0
    disallowed_rows = torch.from_numpy(disallowed).to(logits.device)
    for i, row in enumerate(rows.tolist()):
        logits[row].masked_fill_(disallowed_rows[i], _NEG_INF)
    return logits


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature; greedy rows (temperature 0) are divided by 1 instead, their
    result is discarded by the caller."""
    safe = torch.where(temperature > 0, temperature, torch.ones_like(temperature))  # [B]
    return logits / safe.to(logits.dtype)[:, None]


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Mask tokens outside each row's top-k, then outside its top-p nucleus.

    top-k keeps every token whose logit is >= the k-th largest (ties at the boundary are all kept, as
    in vLLM). top-p keeps the smallest set of most likely tokens whose probability, renormalised after
    top-k, reaches p; the most likely token is always kept. Rows with top_k = V / top_p = 1 are left
    as they are.
    """
    if top_p is None:
        if top_k is None:
            return logits
        return _apply_top_k_only(logits, top_k, max_top_k)

    if logits.device.type == "cpu" and logits.shape[1] > _NUCLEUS_CANDIDATES:
        return _top_k_top_p_from_candidates(logits, top_k, max_top_k, top_p)
    return _top_k_top_p_sorted(logits, top_k, top_p)


def _top_k_top_p_sorted(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor) -> torch.Tensor:
    # One ascending sort serves both filters.
    vocab_size = logits.shape[1]
    sorted_logits, sorted_ids = logits.sort(dim=-1)  # [B, V] each
    if top_k is not None:
        # In ascending order the k-th largest logit sits at position V - k.
        kth = sorted_logits.gather(1, (vocab_size - top_k)[:, None])  # [B, 1]
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, _NEG_INF)
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    # Drop a token when the mass of tokens no more likely than it is still <= 1 - p, i.e. when the
    # tokens above it already reach p on their own.
    drop = cum_probs <= (1.0 - top_p.to(cum_probs.dtype))[:, None]
    drop[:, -1] = False
    sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, sorted_ids, sorted_logits)


def _top_k_top_p_from_candidates(
    logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int, top_p: torch.Tensor
) -> torch.Tensor:
    """``apply_top_k_top_p`` from each row's ``_NUCLEUS_CANDIDATES`` largest logits where they decide it: a
    full sort of a 49k vocabulary takes ~4.5 ms a row on a CPU, ``topk(256)`` ~0.2 ms. Rows whose nucleus
    (or top-k, ties included) may reach past the candidates go through the full sort. It reads one value on
    the host (whether any row does), hence CPU only."""
    vocab_size = logits.shape[1]
    values, ids = logits.topk(_NUCLEUS_CANDIDATES, dim=-1)  # [B, C] descending
    has_top_k = torch.zeros_like(top_p, dtype=torch.bool) if top_k is None else top_k < vocab_size
    beyond = torch.zeros_like(has_top_k)  # rows whose top-k may hold tokens outside the candidates
    if top_k is not None:
        kth = values.gather(1, (top_k.clamp(max=_NUCLEUS_CANDIDATES) - 1)[:, None])  # [B, 1]
        beyond = has_top_k & ((top_k > _NUCLEUS_CANDIDATES) | (values[:, -1] >= kth[:, 0]))
        values = values.masked_fill(has_top_k[:, None] & (values < kth), _NEG_INF)
    # log of each row's normaliser: its top-k's (all among the candidates) or the whole vocabulary's
    log_total = torch.where(has_top_k[:, None], values.logsumexp(dim=-1, keepdim=True),
                            logits.logsumexp(dim=-1, keepdim=True))
    probs = (values - log_total).exp()  # [B, C]
    cum_probs = probs.cumsum(dim=-1)
    keep = (cum_probs - probs) < top_p[:, None]  # the mass strictly more likely than it is below p
    keep[:, 0] = True
    without_top_p = top_p >= 1.0  # these rows take top-k alone, over the whole row, below
    # A row is decided here when its candidates' mass reaches p: every token past them has p above it.
    needs_sort = ~without_top_p & (beyond | (cum_probs[:, -1] < top_p))
    nucleus = torch.full_like(logits, _NEG_INF).scatter_(1, ids, values.masked_fill(~keep, _NEG_INF))
    if bool(without_top_p.any()):
        top_k_only = logits if top_k is None else _apply_top_k_only(logits, top_k, max_top_k)
        nucleus = torch.where(without_top_p[:, None], top_k_only, nucleus)
    if bool(needs_sort.any()):
        rows = needs_sort.nonzero().squeeze(1)
        nucleus[rows] = _top_k_top_p_sorted(logits[rows], None if top_k is None else top_k[rows], top_p[rows])
    return nucleus


def _apply_top_k_only(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    # topk(max_top_k) is much cheaper than a full sort when k << V. Rows without top-k (k = V) may
    # index past max_top_k, so their index is clamped and their threshold replaced by -inf.
    top_values = logits.topk(max_top_k, dim=-1).values  # [B, max_top_k], descending
    index = (top_k.clamp(max=max_top_k) - 1)[:, None]  # [B, 1]
    kth = top_values.gather(1, index)  # [B, 1]
    kth = kth.masked_fill((top_k >= logits.shape[1])[:, None], _NEG_INF)
    return logits.masked_fill(logits < kth, _NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below ``min_p`` times the row's top probability.

    Done in logit space: p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p). The ratio does not
    depend on normalisation, so no softmax is needed; min_p = 0 gives log 0 = -inf and keeps everything.
    """
    max_logits = logits.amax(dim=-1, keepdim=True)  # [B, 1]
    threshold = max_logits + torch.log(min_p.to(logits.dtype))[:, None]
    return logits.masked_fill(logits < threshold, _NEG_INF)


def random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Draw one token per row from ``probs`` [B, V] (weights: rows need not sum to 1) by inverting its
    cumulative sum at one uniform draw: token i is returned with probability p_i / sum(p), and a token of
    weight 0 never is.

    Unseeded rows share one batched draw from the default generator. A seeded row overwrites its draw with
    one from its own generator, so its token depends only on its seed and its own probabilities, and every
    step consumes the same amount of its randomness whatever the batch. One uniform a row, not the
    exponential race's V exponentials (argmax(p_i / q_i)), which cost about 1 ms a row of the default
    model's 49,152 tokens on a CPU (docs/performance.md, "Sampling on a CPU").
    """
    u = torch.empty(probs.shape[0], 1, dtype=torch.float64, device=probs.device)
    if len(generators) < probs.shape[0]:
        u.uniform_()
    for row, generator in generators.items():
        u[row].uniform_(generator=generator)
    return inverse_cdf(probs, u)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative weight passes ``u`` [B, 1] (in [0, 1]) of the row's total."""
    # in float64, so that rounding in the running sum cannot shift the boundaries between tokens measurably
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()  # [B, 1]
    ids = torch.searchsorted(cdf, u * total, right=True).squeeze(1)  # the first i with cdf_i > u * total
    # u * total may round up to total itself (ids = V): then the last token of positive weight, the first
    # whose cumulative weight reaches the total, never one of weight 0 after it
    return torch.minimum(ids, torch.searchsorted(cdf, total).squeeze(1))


__all__ = ["apply_min_p", "apply_temperature", "apply_top_k_top_p", "inverse_cdf", "random_sample"]
