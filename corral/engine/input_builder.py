"""Turns a SchedulerOutput into the model's inputs: token ids, positions, slot mapping and
attention metadata, built once per step with numpy (no per-token Python loops)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from corral.engine.batch import ScheduledRequest, SchedulerOutput
from corral.engine.request import Request
from corral.layers.attention.metadata import AttentionMetadata, PrefillChunk


@dataclass
class PromptLogprobRows:
    """Prompt positions ``first_position..`` of a request with prompt_logprobs, computed this step: the rows of
    the step's hidden states that hold them, in position order."""

    request: Request
    first_position: int
    hidden_rows: torch.Tensor  # [num_positions] int64


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn_metadata: AttentionMetadata
    # Requests whose next token is sampled, and the rows whose logits they need: their last token's, or
    # with draft tokens the last token's and every draft's (1 + len(spec_token_ids) rows, in order).
    sampling_requests: list[ScheduledRequest]
    logits_indices: torch.Tensor  # [num_logits_rows]
    prompt_logprob_rows: list[PromptLogprobRows] = field(default_factory=list)


def prompt_tail_start(num_prompt_tokens: int, block_size: int) -> int:
    """First position of the prompt's last block. A prompt served from the prefix cache computes exactly the
    positions from here on (the cache holds whole blocks, and the last prompt token is always computed)."""
    return (num_prompt_tokens - 1) // block_size * block_size


@dataclass(frozen=True)
class _Piece:
    """Positions ``[start, start + num_tokens)`` of entry ``entry``, attended one row per token or as a chunk."""

    entry: int
    start: int
    num_tokens: int


def split_for_attention(entries: list[ScheduledRequest], block_size: int) -> tuple[list[_Piece], list[_Piece]]:
    """(per-token pieces, prompt chunks). Decodes, draft checks and every position from the prompt's last
    block on go through the per-token kernel; the rest of a prompt chunk is one dense chunk. Prompt tails
    are per-token so that the positions a prefix-cache hit recomputes (the prompt's last block) get the
    same arithmetic as when the whole prompt is computed: the dense chunk's rounding depends on its shape."""
    per_token: list[_Piece] = []
    chunks: list[_Piece] = []
    for index, s in enumerate(entries):
        start, end = s.num_computed_tokens, s.num_computed_tokens + s.num_new_tokens
        tail = start if s.spec_token_ids else max(start, prompt_tail_start(s.request.num_prompt_tokens, block_size))
        if tail > start:
            chunks.append(_Piece(index, start, min(tail, end) - start))
        if end > tail:
            per_token.append(_Piece(index, tail, end - tail))
    return per_token, chunks


def build_model_inputs(
    scheduler_output: SchedulerOutput, block_size: int, device: torch.device
) -> ModelInputs:
    entries = scheduler_output.scheduled
    per_token, chunks = split_for_attention(entries, block_size)
    pieces = per_token + chunks  # per-token rows first, as AttentionMetadata expects
    num_pieces = len(pieces)
    starts = np.fromiter((p.start for p in pieces), dtype=np.int64, count=num_pieces)
    lens = np.fromiter((p.num_tokens for p in pieces), dtype=np.int64, count=num_pieces)
    entry_of_piece = np.fromiter((p.entry for p in pieces), dtype=np.int64, count=num_pieces)
    cu_lens = np.cumsum(lens)
    num_tokens = int(cu_lens[-1])
    query_starts = cu_lens - lens

    # positions[t] = start of t's piece + offset of t within it
    row_of_token = np.repeat(entry_of_piece, lens)
    positions = np.arange(num_tokens) - np.repeat(query_starts - starts, lens)

    max_blocks = max(len(s.block_ids) for s in entries)
    block_tables = np.zeros((len(entries), max_blocks), dtype=np.int64)
    for row, s in enumerate(entries):
        block_tables[row, : len(s.block_ids)] = s.block_ids
    slot_mapping = block_tables[row_of_token, positions // block_size] * block_size + positions % block_size

    input_ids = np.empty(num_tokens, dtype=np.int64)
    for piece, q0 in zip(pieces, query_starts.tolist(), strict=True):
        s = entries[piece.entry]
        # the entry's draft tokens are its last len(spec_token_ids) positions (never split off: see above)
        num_known = min(piece.num_tokens, s.request.num_tokens - piece.start)
        input_ids[q0 : q0 + num_known] = s.request.all_token_ids[piece.start : piece.start + num_known]
        input_ids[q0 + num_known : q0 + piece.num_tokens] = s.spec_token_ids

    num_decodes = int(cu_lens[len(per_token) - 1]) if per_token else 0
    prefills = []
    for index in range(len(per_token), num_pieces):
        ctx = int(starts[index] + lens[index])
        pos = np.arange(ctx)
        kv_slots = block_tables[entry_of_piece[index], pos // block_size] * block_size + pos % block_size
        prefills.append(
            PrefillChunk(int(query_starts[index]), int(lens[index]), ctx, torch.from_numpy(kv_slots).to(device))
        )

    # Each sampling entry's logits rows: the last 1 + len(spec_token_ids) tokens of the piece that ends it.
    end_of_entry = np.zeros(len(entries), dtype=np.int64)
    for piece, end in zip(pieces, cu_lens.tolist(), strict=True):
        s = entries[piece.entry]
        if piece.start + piece.num_tokens == s.num_computed_tokens + s.num_new_tokens:
            end_of_entry[piece.entry] = end
    sampling_rows = [row for row, s in enumerate(entries) if s.samples]
    num_logits = np.fromiter((1 + len(entries[row].spec_token_ids) for row in sampling_rows), np.int64, len(sampling_rows))
    logits_indices = np.repeat(end_of_entry[sampling_rows], num_logits) - (
        np.repeat(np.cumsum(num_logits), num_logits) - np.arange(int(num_logits.sum()))
    )

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    metadata = AttentionMetadata(
        slot_mapping=to_tensor(slot_mapping),
        block_tables=to_tensor(block_tables),
        seq_of_token=to_tensor(row_of_token),
        context_lens=to_tensor(positions + 1),
        num_decode_tokens=num_decodes,
        prefills=prefills,
    )
    return ModelInputs(
        input_ids=to_tensor(input_ids),
        positions=to_tensor(positions),
        attn_metadata=metadata,
        sampling_requests=[entries[row] for row in sampling_rows],
        logits_indices=to_tensor(logits_indices),
        prompt_logprob_rows=_prompt_logprob_rows(entries, row_of_token, positions, device),
    )


def _prompt_logprob_rows(
    entries: list[ScheduledRequest], row_of_token: np.ndarray, positions: np.ndarray, device: torch.device
) -> list[PromptLogprobRows]:
    """Where each prompt_logprobs request's not yet scored prompt positions sit among this step's tokens (an
    entry's prompt tail comes before its dense chunk, hence the sort by position)."""
    found = []
    for row, s in enumerate(entries):
        wanted = s.request.prompt_logprob_positions(s.num_computed_tokens, s.num_computed_tokens + s.num_new_tokens)
        if not wanted:
            continue
        tokens = np.flatnonzero((row_of_token == row) & (positions >= wanted.start) & (positions < wanted.stop))
        tokens = tokens[np.argsort(positions[tokens], kind="stable")]
        found.append(PromptLogprobRows(s.request, wanted.start, torch.from_numpy(tokens).to(device)))
    return found


def build_decode_inputs(
    input_ids: list[int], positions: list[int], block_tables: list[list[int]], block_size: int, device: torch.device
) -> ModelInputs:
    """Inputs for one token per sequence at the given positions (a draft model's proposal steps), whose
    block tables already cover them. Every row's logits are wanted; ``sampling_requests`` is empty."""
    num_seqs = len(input_ids)
    position_array = np.asarray(positions, dtype=np.int64)
    max_blocks = max(len(table) for table in block_tables)
    tables = np.zeros((num_seqs, max_blocks), dtype=np.int64)
    for row, table in enumerate(block_tables):
        tables[row, : len(table)] = table
    rows = np.arange(num_seqs)
    slot_mapping = tables[rows, position_array // block_size] * block_size + position_array % block_size
    metadata = AttentionMetadata(
        slot_mapping=torch.from_numpy(slot_mapping).to(device),
        block_tables=torch.from_numpy(tables).to(device),
        seq_of_token=torch.from_numpy(rows).to(device),
        context_lens=torch.from_numpy(position_array + 1).to(device),
        num_decode_tokens=num_seqs,
        prefills=[],
    )
    return ModelInputs(
        input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
        positions=torch.from_numpy(position_array).to(device),
        attn_metadata=metadata,
        sampling_requests=[],
        logits_indices=torch.from_numpy(rows).to(device),
    )
