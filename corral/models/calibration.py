"""Run a model densely over one token sequence, whole or a layer at a time: for calibration statistics
and offline scoring."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from corral.kernels import kv_int8
from corral.layers.attention.metadata import AttentionMetadata, PrefillChunk
from corral.layers.attention.torch_paged import TorchPagedAttention
from corral.layers.linear import Linear


class DenseSequence:
    """One sequence as a single prefill into a scratch KV cache (identity slots, no scheduler).

    Layers run one call at a time, so a loader can calibrate each layer as it streams in; the scratch
    cache is shared by all layers, since each writes its whole K/V before reading it.
    """

    def __init__(self, model: torch.nn.Module, token_ids: list[int], kv_cache_dtype: str = "model"):
        self.model = model
        config = model.config
        num_tokens = len(token_ids)
        param = next(model.parameters())
        device = param.device
        row, row_dtype = kv_int8.row_layout(config.head_size, param.dtype, kv_cache_dtype)
        self.kv_cache = torch.zeros(2, num_tokens, config.num_key_value_heads, row, dtype=row_dtype, device=device)
        slots = torch.arange(num_tokens, device=device)
        self.metadata = AttentionMetadata(
            slot_mapping=slots,
            block_tables=slots.view(1, -1),  # blocks of one slot: the identity table
            seq_of_token=torch.zeros(num_tokens, dtype=torch.long, device=device),
            context_lens=slots + 1,
            num_decode_tokens=0,
            prefills=[PrefillChunk(0, num_tokens, num_tokens, slots)],
        )
        self.backend = TorchPagedAttention(
            config.num_attention_heads, config.num_key_value_heads, config.head_size, block_size=1
        )
        self.input_ids = torch.tensor(token_ids, device=device)
        self.rope = model.model.rotary.cos_sin(slots, param.dtype)

    @torch.inference_mode()
    def embed(self) -> torch.Tensor:  # [num_tokens, hidden_size]
        return self.model.model.embed_tokens(self.input_ids)

    @torch.inference_mode()
    def layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.model.model.layers[index]
        return layer(self.rope, hidden, self.kv_cache, self.metadata, self.backend)


@torch.inference_mode()
def sequence_logits(model: torch.nn.Module, token_ids: list[int], kv_cache_dtype: str = "model") -> torch.Tensor:
    """``[len(token_ids), vocab_size]`` logits of one sequence (K/V kept in ``kv_cache_dtype``)."""
    sequence = DenseSequence(model, token_ids, kv_cache_dtype)
    hidden = sequence.embed()
    for index in range(len(model.model.layers)):
        hidden = sequence.layer(index, hidden)
    return model.compute_logits(model.model.norm(hidden))


@contextmanager
def recording_input_absmax(module: torch.nn.Module, prefix: str = "") -> Iterator[dict[str, torch.Tensor]]:
    """While open, the dict collects the per-input-channel max |activation| seen by every float ``Linear``
    under ``module`` (keyed by full name: ``prefix`` is the module's own name in the model)."""
    absmax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(linear: Linear, args: tuple[torch.Tensor, ...]) -> None:
            seen = args[0].detach().abs().amax(dim=0).float()
            absmax[name] = torch.maximum(absmax[name], seen) if name in absmax else seen

        return record

    handles = [
        linear.register_forward_pre_hook(hook(name))
        for name, linear in module.named_modules(prefix=prefix)
        if isinstance(linear, Linear) and linear.packed is None
    ]
    try:
        yield absmax
    finally:
        for handle in handles:
            handle.remove()


def record_input_absmax(model: torch.nn.Module, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """``recording_input_absmax`` over the whole model and one pass of ``token_ids``."""
    with recording_input_absmax(model) as absmax:
        sequence_logits(model, token_ids)
    return absmax


@contextmanager
def recording_inputs(linears: Mapping[str, Linear]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While open, the dict collects every input ``[num_rows, in_features]`` each named linear receives."""
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    handles = [
        linear.register_forward_pre_hook(lambda _, args, name=name: inputs[name].append(args[0].detach().clone()))
        for name, linear in linears.items()
    ]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()
