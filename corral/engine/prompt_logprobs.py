"""Prompt logprobs: the raw log-softmax of the logits at each prompt position, scoring the prompt token after it.

The vocabulary projection runs over a bounded number of rows at a time, and only the prompt token's and the top-N
columns of each row are kept: a long prompt never holds its full [num_positions, vocab] matrix."""

from __future__ import annotations

import torch

from corral.engine.batch import SampledToken
from corral.engine.input_builder import PromptLogprobRows
from corral.sample.sampler import gather_logprobs

# Rows projected to the vocabulary at once: 256 x 49152 fp32 logits are 48 MiB.
MAX_ROWS_PER_PROJECTION = 256


def compute_prompt_logprobs(
    model: torch.nn.Module, hidden: torch.Tensor, wanted: list[PromptLogprobRows]
) -> dict[str, list[SampledToken]]:
    """For each request, one SampledToken per position in ``wanted``: ``token_id`` the prompt token it scores,
    then (as for sampled tokens) column 0 that token and columns 1.. the top ``prompt_logprobs``, with its rank."""
    result: dict[str, list[SampledToken]] = {}
    for entry in wanted:
        request = entry.request
        num_top = request.sampling_params.prompt_logprobs
        assert num_top is not None
        first = entry.first_position + 1  # logits at position p score prompt token p + 1
        num_rows = entry.hidden_rows.shape[0]
        targets = torch.tensor(request.prompt_token_ids[first : first + num_rows], dtype=torch.int64, device=hidden.device)
        rows: list[SampledToken] = []
        for start in range(0, num_rows, MAX_ROWS_PER_PROJECTION):
            end = min(start + MAX_ROWS_PER_PROJECTION, num_rows)
            logits = model.compute_logits(hidden[entry.hidden_rows[start:end]]).float()  # [rows, vocab]
            token_ids, logprobs, ranks = gather_logprobs(torch.log_softmax(logits, dim=-1), targets[start:end], num_top)
            rows.extend(
                SampledToken(ids[0], ids, values, rank)
                for ids, values, rank in zip(token_ids.tolist(), logprobs.tolist(), ranks.tolist(), strict=True)
            )
        result[request.request_id] = rows
    return result
