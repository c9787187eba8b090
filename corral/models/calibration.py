"""Run a model densely over one token sequence: for calibration statistics and offline scoring."""

from __future__ import annotations

import torch

from corral.layers.attention.metadata import AttentionMetadata, PrefillChunk
from corral.layers.attention.torch_paged import TorchPagedAttention
from corral.layers.linear import Linear


@torch.inference_mode()
def sequence_logits(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """``[len(token_ids), vocab_size]`` logits of one sequence, computed as a single prefill into a
    scratch KV cache (no scheduler, no paging beyond the identity block table)."""
    config = model.config
    num_tokens = len(token_ids)
    param = next(model.parameters())
    kv_caches = [
        torch.zeros(2, num_tokens, config.num_key_value_heads, config.head_size, dtype=param.dtype, device=param.device)
        for _ in range(config.num_hidden_layers)
    ]
    slots = torch.arange(num_tokens, device=param.device)
    empty = torch.zeros(0, dtype=torch.long, device=param.device)
    metadata = AttentionMetadata(
        slot_mapping=slots,
        num_decode_tokens=0,
        decode_block_tables=empty.view(0, 1),
        decode_context_lens=empty,
        prefills=[PrefillChunk(0, num_tokens, num_tokens, slots)],
    )
    backend = TorchPagedAttention(
        config.num_attention_heads, config.num_key_value_heads, config.head_size, block_size=1
    )
    input_ids = torch.tensor(token_ids, device=param.device)
    hidden = model(input_ids, slots, kv_caches, metadata, backend)
    return model.compute_logits(hidden)


def record_input_absmax(model: torch.nn.Module, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |activation| seen by every float ``Linear`` over ``token_ids``."""
    absmax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: Linear, args: tuple[torch.Tensor, ...]) -> None:
            seen = args[0].detach().abs().amax(dim=0).float()
            absmax[name] = torch.maximum(absmax[name], seen) if name in absmax else seen

        return record

    handles = [
        module.register_forward_pre_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, Linear) and module.packed is None
    ]
    try:
        sequence_logits(model, token_ids)
    finally:
        for handle in handles:
            handle.remove()
    return absmax
