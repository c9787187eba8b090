"""Turns a SchedulerOutput into the model's inputs: token ids, positions, slot mapping and
attention metadata, built once per step with numpy (no per-token Python loops)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from corral.engine.batch import ScheduledRequest, SchedulerOutput
from corral.layers.attention.metadata import AttentionMetadata, PrefillChunk


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn_metadata: AttentionMetadata
    # Requests whose next token is sampled, and the rows whose logits they need: their last token's, or
    # with draft tokens the last token's and every draft's (1 + len(spec_token_ids) rows, in order).
    sampling_requests: list[ScheduledRequest]
    logits_indices: torch.Tensor  # [num_logits_rows]


def order_for_attention(scheduled: list[ScheduledRequest]) -> list[ScheduledRequest]:
    """Per-token entries (decodes, draft checks) first, then prompt chunks, as AttentionMetadata expects."""
    return [s for s in scheduled if s.attends_per_token] + [s for s in scheduled if not s.attends_per_token]


def build_model_inputs(
    scheduler_output: SchedulerOutput, block_size: int, device: torch.device
) -> ModelInputs:
    entries = order_for_attention(scheduler_output.scheduled)
    num_reqs = len(entries)
    starts = np.fromiter((s.num_computed_tokens for s in entries), dtype=np.int64, count=num_reqs)
    lens = np.fromiter((s.num_new_tokens for s in entries), dtype=np.int64, count=num_reqs)
    cu_lens = np.cumsum(lens)
    num_tokens = int(cu_lens[-1])
    query_starts = cu_lens - lens

    # positions[t] = start of t's request + offset of t within its chunk
    row_of_token = np.repeat(np.arange(num_reqs), lens)
    positions = np.arange(num_tokens) - np.repeat(query_starts - starts, lens)

    max_blocks = max(len(s.block_ids) for s in entries)
    block_tables = np.zeros((num_reqs, max_blocks), dtype=np.int64)
    for row, s in enumerate(entries):
        block_tables[row, : len(s.block_ids)] = s.block_ids
    slot_mapping = block_tables[row_of_token, positions // block_size] * block_size + positions % block_size

    input_ids = np.empty(num_tokens, dtype=np.int64)
    for s, q0, n in zip(entries, query_starts.tolist(), lens.tolist(), strict=True):
        num_known = n - len(s.spec_token_ids)
        input_ids[q0 : q0 + num_known] = s.request.all_token_ids[s.num_computed_tokens : s.num_computed_tokens + num_known]
        input_ids[q0 + num_known : q0 + n] = s.spec_token_ids

    num_per_token_entries = sum(1 for s in entries if s.attends_per_token)
    num_decodes = int(cu_lens[num_per_token_entries - 1]) if num_per_token_entries else 0
    context_lens = starts + lens
    prefills = []
    for row in range(num_per_token_entries, num_reqs):
        ctx = int(context_lens[row])
        pos = np.arange(ctx)
        kv_slots = block_tables[row, pos // block_size] * block_size + pos % block_size
        prefills.append(
            PrefillChunk(int(query_starts[row]), int(lens[row]), ctx, torch.from_numpy(kv_slots).to(device))
        )

    sampling_rows = [row for row, s in enumerate(entries) if s.samples]
    num_logits = np.fromiter((1 + len(entries[row].spec_token_ids) for row in sampling_rows), np.int64, len(sampling_rows))
    # each sampling entry's last num_logits rows: its end minus a countdown num_logits .. 1
    logits_indices = np.repeat(cu_lens[sampling_rows], num_logits) - (
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
    )


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
