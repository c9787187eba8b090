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
    # Requests whose next token is sampled, and the row of their last token in the batch.
    sampling_requests: list[ScheduledRequest]
    logits_indices: torch.Tensor  # [num_sampling]


def order_for_attention(scheduled: list[ScheduledRequest]) -> list[ScheduledRequest]:
    """Single-token entries (decodes) first, then multi-token chunks, as AttentionMetadata expects."""
    return [s for s in scheduled if s.num_new_tokens == 1] + [s for s in scheduled if s.num_new_tokens > 1]


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
        input_ids[q0 : q0 + n] = s.request.all_token_ids[s.num_computed_tokens : s.num_computed_tokens + n]

    num_decodes = int(np.count_nonzero(lens == 1))
    context_lens = starts + lens
    prefills = []
    for row in range(num_decodes, num_reqs):
        ctx = int(context_lens[row])
        pos = np.arange(ctx)
        kv_slots = block_tables[row, pos // block_size] * block_size + pos % block_size
        prefills.append(
            PrefillChunk(int(query_starts[row]), int(lens[row]), ctx, torch.from_numpy(kv_slots).to(device))
        )

    sampling_rows = [row for row, s in enumerate(entries) if s.samples]
    logits_indices = cu_lens[sampling_rows] - 1

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
