"""Choose what a shape keeps (the most important units) and slice the weights to it.

Slicing rules, under HF Llama names:

- layers: the kept layers are renumbered 0..n-1 in their original order;
- FFN channels: rows of ``gate_proj`` / ``up_proj``, columns of ``down_proj``;
- heads: rows of ``q_proj`` (and its bias) per kept query head, rows of ``k_proj`` / ``v_proj`` per kept KV
  group, the matching columns of ``o_proj``; kept groups keep their order, and each its kept query heads
  in order, so query head j still attends with KV head j // queries_per_kv;
- hidden channels: columns of the embedding, the LM head and every linear reading the residual stream,
  rows of ``o_proj`` / ``down_proj``, entries of every norm. RMSNorm divides by the root mean square over
  all channels, so the norms' weights are scaled by sqrt(H / H') and eps by H / H' (``shape.pruned_config``):
  where the pruned channels carry nothing, each norm computes exactly what it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from corral.compress.prune.importance import ImportanceScores
from corral.compress.prune.shape import PruneShape, check_shape, pruned_config
from corral.models.spec import ModelConfig


@dataclass(frozen=True)
class PrunePlan:
    """The original indices each kept unit comes from, ascending."""

    shape: PruneShape
    layers: list[int]
    ffn_channels: list[list[int]]  # per kept layer
    kv_groups: list[list[int]]  # per kept layer
    query_heads: list[list[int]]  # per kept layer: original query-head indices, grouped by kept KV group
    hidden_channels: list[int]


def plan_pruning(config: ModelConfig, scores: ImportanceScores, shape: PruneShape) -> PrunePlan:
    """Keep the ``shape``'s worth of the highest-scoring units of each kind."""
    check_shape(config, shape)
    layers = _top(scores.layers, shape.num_hidden_layers)
    groups_per_layer = scores.kv_groups(config.num_key_value_heads)
    queries_per_group = shape.num_attention_heads // shape.num_key_value_heads
    ffn, kv_groups, query_heads = [], [], []
    for layer in layers:
        ffn.append(_top(scores.ffn_channels[layer], shape.intermediate_size))
        groups = _top(groups_per_layer[layer], shape.num_key_value_heads)
        heads = []
        for group in groups:
            first = group * config.num_queries_per_kv
            in_group = _top(scores.query_heads[layer, first : first + config.num_queries_per_kv], queries_per_group)
            heads.extend(first + head for head in in_group)
        kv_groups.append(groups)
        query_heads.append(heads)
    hidden = _top(scores.hidden_channels, shape.hidden_size)
    return PrunePlan(shape, layers, ffn, kv_groups, query_heads, hidden)


def apply_plan(
    config: ModelConfig, weights: Mapping[str, torch.Tensor], plan: PrunePlan
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The pruned config and its weights (new tensors; ``weights`` is only read)."""
    new_config = pruned_config(config, plan.shape)
    hidden = torch.tensor(plan.hidden_channels)
    norm_scale = (config.hidden_size / plan.shape.hidden_size) ** 0.5
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": weights["model.embed_tokens.weight"][:, hidden].clone(),
        "model.norm.weight": weights["model.norm.weight"][hidden] * norm_scale,
    }
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = weights["lm_head.weight"][:, hidden].clone()
    for new_index, old_index in enumerate(plan.layers):
        q_rows = _head_rows(plan.query_heads[new_index], config.head_size)
        kv_rows = _head_rows(plan.kv_groups[new_index], config.head_size)
        ffn = torch.tensor(plan.ffn_channels[new_index])
        old, new = f"model.layers.{old_index}.", f"model.layers.{new_index}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{new}{norm}.weight"] = weights[f"{old}{norm}.weight"][hidden] * norm_scale
        # (rows kept, columns kept) of each linear
        slices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
            "self_attn.q_proj": (q_rows, hidden),
            "self_attn.k_proj": (kv_rows, hidden),
            "self_attn.v_proj": (kv_rows, hidden),
            "self_attn.o_proj": (hidden, q_rows),
            "mlp.gate_proj": (ffn, hidden),
            "mlp.up_proj": (ffn, hidden),
            "mlp.down_proj": (hidden, ffn),
        }
        for name, (rows, columns) in slices.items():
            out[f"{new}{name}.weight"] = weights[f"{old}{name}.weight"][rows][:, columns].contiguous()
            if f"{old}{name}.bias" in weights:
                out[f"{new}{name}.bias"] = weights[f"{old}{name}.bias"][rows].clone()
    return new_config, out


def plan_summary(plan: PrunePlan) -> dict[str, object]:
    """What was kept, for the ``prune.json`` written beside the weights."""
    return {"layers": plan.layers, "hidden_channels": plan.hidden_channels, "kv_groups": plan.kv_groups,
            "query_heads": plan.query_heads, "ffn_channels": plan.ffn_channels}


def _top(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` largest scores, ascending (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def _head_rows(heads: list[int], head_size: int) -> torch.Tensor:
    return (torch.tensor(heads)[:, None] * head_size + torch.arange(head_size)).flatten()
