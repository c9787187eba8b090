"""Shapes that fit a parameter or memory budget, ranked by the importance they lose.

In the spirit of ModelOpt's Minitron search: enumerate shapes on a grid (widths in steps of
``width_step``, any depth, every head layout of whole groups and queries per group) within bounds on how
much width and depth may go, keep those that fit the budget and use most of it, and rank them by the
share of importance they drop. The caller then scores the best few on text (``pipeline.py``).

Importance lost: 1 - the product, over layers, FFN width, heads and hidden width, of the share of that
kind's summed importance the shape keeps (for widths: averaged over the kept layers).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from corral.compress.prune.importance import ImportanceScores
from corral.compress.prune.shape import PruneShape, ShapeConstraints, count_parameters, pruned_config
from corral.errors import ConfigError
from corral.models.spec import ModelConfig


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the search. ``max_*_pruning``: the largest share of a dimension that may go;
    ``budget_slack``: candidates keep at least (1 - slack) x the parameters of the largest shape that fits."""

    width_step: int = 64
    max_width_pruning: float = 0.5
    max_depth_pruning: float = 0.5
    budget_slack: float = 0.03

    def __post_init__(self) -> None:
        if self.width_step < 1:
            raise ConfigError(f"the search's width step must be >= 1, got {self.width_step}")
        for name in ("max_width_pruning", "max_depth_pruning", "budget_slack"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class Candidate:
    shape: PruneShape
    num_parameters: int
    importance_lost: float


def search_shapes(
    config: ModelConfig,
    scores: ImportanceScores,
    max_parameters: int,
    space: SearchSpace | None = None,
    fixed: ShapeConstraints | None = None,
) -> list[Candidate]:
    """Every shape of ``space`` with at most ``max_parameters`` and the ``fixed`` dimensions, near the largest
    that fits, least importance lost first."""
    fitting = fitting_shapes(config, max_parameters, space, fixed)
    largest = max(size for _, size in fitting)
    slack = (space or SearchSpace()).budget_slack
    kept = [(shape, size) for shape, size in fitting if size >= (1 - slack) * largest]
    ranking = _LossModel(config, scores)
    candidates = [Candidate(shape, size, ranking.lost(shape)) for shape, size in kept]
    return sorted(candidates, key=lambda c: (c.importance_lost, -c.num_parameters))


def fitting_shapes(
    config: ModelConfig,
    max_parameters: int,
    space: SearchSpace | None = None,
    fixed: ShapeConstraints | None = None,
) -> list[tuple[PruneShape, int]]:
    """(shape, parameters) of every shape of ``space`` with the ``fixed`` dimensions and at most
    ``max_parameters``; ``ConfigError`` if there is none (needs no scores: the pipeline checks it first)."""
    space = space if space is not None else SearchSpace()
    fixed = fixed if fixed is not None else ShapeConstraints()
    embeddings = count_parameters(pruned_config(config, PruneShape(1, 1, 1, 1, config.hidden_size)))
    fitting: list[tuple[PruneShape, int]] = []
    smallest = None
    for shape in _grid(config, space, fixed):
        size = count_parameters(pruned_config(config, shape))
        smallest = size if smallest is None else min(smallest, size)
        if size <= max_parameters:
            fitting.append((shape, size))
    if not fitting:
        floor = "none" if smallest is None else f"{smallest:,}"
        raise ConfigError(
            f"no shape within the search bounds has at most {max_parameters:,} parameters: the smallest has "
            f"{floor} (embeddings and one layer at full width: {embeddings:,}); allow more pruning or raise the budget"
        )
    return fitting


def _grid(config: ModelConfig, space: SearchSpace, fixed: ShapeConstraints) -> Iterator[PruneShape]:
    smallest = _smallest(config, space)
    layers = _fixed_or(fixed.num_hidden_layers, range(smallest.num_hidden_layers, config.num_hidden_layers + 1))
    ffn = _fixed_or(fixed.intermediate_size,
                    _widths(smallest.intermediate_size, config.intermediate_size, space.width_step))
    hidden = _fixed_or(fixed.hidden_size, _widths(smallest.hidden_size, config.hidden_size, space.width_step))
    head_layouts = [  # (query heads, KV heads)
        (kv * per_group, kv)
        for kv in range(1, config.num_key_value_heads + 1)
        for per_group in range(1, config.num_queries_per_kv + 1)
        if (kv if fixed.num_key_value_heads is None else fixed.num_key_value_heads) == kv
        and (kv >= smallest.num_key_value_heads and kv * per_group >= smallest.num_attention_heads
             if fixed.num_attention_heads is None else kv * per_group == fixed.num_attention_heads)
    ]
    for num_layers, ffn_size, (heads, kv_heads), hidden_size in itertools.product(layers, ffn, head_layouts, hidden):
        yield PruneShape(num_layers, ffn_size, heads, kv_heads, hidden_size)


def _fixed_or(value: int | None, choices: Iterable[int]) -> list[int]:
    return list(choices) if value is None else [value]


def _smallest(config: ModelConfig, space: SearchSpace) -> PruneShape:
    def floor(size: int, share: float) -> int:
        return max(1, -(-int(round(size * (1 - share) * 1000)) // 1000))  # ceil, robust to float noise

    return PruneShape(
        floor(config.num_hidden_layers, space.max_depth_pruning),
        floor(config.intermediate_size, space.max_width_pruning),
        floor(config.num_attention_heads, space.max_width_pruning),
        floor(config.num_key_value_heads, space.max_width_pruning),
        floor(config.hidden_size, space.max_width_pruning),
    )


def _widths(low: int, full: int, step: int) -> list[int]:
    """Multiples of ``step`` in [low, full], and ``full`` itself."""
    return sorted({w for w in range(step * -(-low // step), full + 1, step)} | {full})


class _LossModel:
    """Share of importance a shape keeps, per kind, from sorted cumulative sums (cheap per candidate)."""

    def __init__(self, config: ModelConfig, scores: ImportanceScores):
        self.config = config
        self.layer_order = scores.layers.argsort(descending=True)
        self.layer_share = _cumulative_share(scores.layers)
        self.ffn_share = torch.stack([_cumulative_share(row) for row in scores.ffn_channels])
        self.hidden_share = _cumulative_share(scores.hidden_channels)
        groups = scores.kv_groups(config.num_key_value_heads)
        self.group_share = torch.stack([_cumulative_share(row) for row in groups])
        per_group = scores.query_heads.view(config.num_hidden_layers, config.num_key_value_heads, -1)
        # share of a group's importance kept by its top-k queries, per layer and group: [L, G, qpg + 1]
        self.query_share = _cumulative_share(per_group)
        self.groups = groups

    def lost(self, shape: PruneShape) -> float:
        kept_layers = self.layer_order[: shape.num_hidden_layers]
        per_group = shape.num_attention_heads // shape.num_key_value_heads
        ffn = self.ffn_share[kept_layers, shape.intermediate_size].mean()
        group_order = self.groups[kept_layers].argsort(dim=-1, descending=True)[:, : shape.num_key_value_heads]
        group_weight = self.groups[kept_layers].gather(1, group_order)
        query_kept = self.query_share[kept_layers][:, :, per_group].gather(1, group_order)
        heads = ((group_weight * query_kept).sum(-1) / self.groups[kept_layers].sum(-1)).mean()
        kept = (self.layer_share[shape.num_hidden_layers] * ffn * heads
                * self.hidden_share[shape.hidden_size])
        return float(1 - kept)


def _cumulative_share(scores: torch.Tensor) -> torch.Tensor:
    """[..., n + 1]: the share of the last dimension's sum held by its k largest entries, k = 0..n."""
    ordered = scores.sort(dim=-1, descending=True).values.clamp_min(0)
    cumulative = torch.cat((torch.zeros_like(ordered[..., :1]), ordered.cumsum(-1)), dim=-1)
    return cumulative / cumulative[..., -1:].clamp_min(torch.finfo(scores.dtype).tiny)
