"""Importance of every prunable unit, from one calibration pass of the float model.

Width follows Minitron (Muralidharan et al. 2024): the importance of a unit is the magnitude of the
activation it produces on calibration text, averaged over tokens:

- an FFN channel: mean |x| of the input of ``down_proj`` at that channel (the gated activation);
- a query head: mean over tokens of the L2 norm of that head's attention output (the input of ``o_proj``);
  a KV group is worth the sum of its query heads;
- a hidden (embedding) channel: mean |x| of every RMSNorm's output at that channel, summed over the norms
  (both norms of each layer and the final one).

Depth follows ShortGPT's block influence (Men et al. 2024): a layer is worth 1 - mean cos(h_in, h_out), how
much it turns the residual stream it receives.

The pass runs ``DenseForward`` with a linear that records what it needs; the residual stream is rebuilt
from the embedding and the outputs of ``o_proj`` and ``down_proj``, so the forward itself is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from corral.compress.dense_forward import DenseForward, float_linears
from corral.models.spec import ModelConfig


@dataclass
class ImportanceScores:
    """Per-unit importance, larger is more important (float32, on CPU)."""

    layers: torch.Tensor  # [num_layers]: block influence
    ffn_channels: torch.Tensor  # [num_layers, intermediate_size]
    query_heads: torch.Tensor  # [num_layers, num_attention_heads]
    hidden_channels: torch.Tensor  # [hidden_size]
    num_tokens: int

    def kv_groups(self, num_key_value_heads: int) -> torch.Tensor:  # [num_layers, num_key_value_heads]
        num_layers, num_heads = self.query_heads.shape
        return self.query_heads.view(num_layers, num_key_value_heads, num_heads // num_key_value_heads).sum(-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"layers": self.layers, "ffn_channels": self.ffn_channels, "query_heads": self.query_heads,
                "hidden_channels": self.hidden_channels}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], num_tokens: int) -> ImportanceScores:
        return cls(tensors["layers"], tensors["ffn_channels"], tensors["query_heads"], tensors["hidden_channels"],
                   num_tokens)


class _Recorder:
    """A ``LinearFn`` over the float weights that accumulates the statistics of one batch after another.

    DenseForward calls each layer's linears in the order q, k, v, o, gate, up, down, so the residual
    stream entering layer i is known at its q_proj call and leaving it at its down_proj call."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, torch.Tensor]):
        self.config = config
        self.float_linear = float_linears(weights)
        layers, heads = config.num_hidden_layers, config.num_attention_heads
        self.ffn_sum = torch.zeros(layers, config.intermediate_size)
        self.head_sum = torch.zeros(layers, heads)
        self.hidden_sum = torch.zeros(config.hidden_size)
        self.influence_sum = torch.zeros(layers)
        self.num_tokens = 0
        self.residual: torch.Tensor | None = None  # [batch, tokens, hidden], the stream as it flows
        self.layer_input: torch.Tensor | None = None

    def start_batch(self, embedded: torch.Tensor) -> None:
        self.residual = embedded
        self.num_tokens += embedded.shape[0] * embedded.shape[1]

    def __call__(self, index: int, name: str, x: torch.Tensor) -> torch.Tensor:
        out = self.float_linear(index, name, x)
        if name in ("self_attn.q_proj", "mlp.gate_proj"):  # x: a norm's output
            self.hidden_sum += x.abs().sum((0, 1))
        if name == "self_attn.q_proj":
            self.layer_input = self.residual
        elif name == "self_attn.o_proj":
            per_head = x.unflatten(-1, (self.config.num_attention_heads, self.config.head_size))
            self.head_sum[index] += per_head.norm(dim=-1).sum((0, 1))
            self.residual = self.residual + out
        elif name == "mlp.down_proj":
            self.ffn_sum[index] += x.abs().sum((0, 1))
            self.residual = self.residual + out
            cosine = F.cosine_similarity(self.layer_input, self.residual, dim=-1)
            self.influence_sum[index] += (1 - cosine).sum()
        return out


@torch.no_grad()
def compute_importance(
    config: ModelConfig, weights: Mapping[str, torch.Tensor], sequences: torch.Tensor, batch_size: int = 1
) -> ImportanceScores:
    """Scores of ``config``'s model (float ``weights`` under HF names) on ``sequences`` ``[num_seqs, tokens]``."""
    recorder = _Recorder(config, weights)
    forward = DenseForward(config, weights, recorder)
    final_norm = weights["model.norm.weight"]
    for batch in sequences.split(batch_size):
        recorder.start_batch(weights["model.embed_tokens.weight"][batch])
        forward(batch)
        stream = recorder.residual
        normed = stream * torch.rsqrt(stream.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * final_norm
        recorder.hidden_sum += normed.abs().sum((0, 1))
    count = recorder.num_tokens
    return ImportanceScores(
        layers=recorder.influence_sum / count,
        ffn_channels=recorder.ffn_sum / count,
        query_heads=recorder.head_sum / count,
        hidden_channels=recorder.hidden_sum / count,
        num_tokens=count,
    )
