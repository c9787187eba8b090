"""``prune_checkpoint``: a checkpoint -> a smaller plain Llama directory, by the steps of the other modules:
calibration scores (cached), the shape (asked for, or searched under a budget), the slicing, the write."""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from corral.compress.dense_forward import DenseForward, float_linears
from corral.compress.prune.apply import apply_plan, plan_pruning, plan_summary
from corral.compress.prune.cache import load_or_compute, scores_key
from corral.compress.prune.importance import ImportanceScores, compute_importance
from corral.compress.prune.search import Candidate, SearchSpace, fitting_shapes, search_shapes
from corral.compress.prune.shape import PruneShape, ShapeConstraints, count_parameters, resolve_shape
from corral.compress.prune.write import write_pruned_dir
from corral.errors import ConfigError
from corral.loader import default_model_path, load_tokenizer, open_checkpoint
from corral.models.spec import ModelConfig
from corral.quantization.corpus import stdlib_docstrings
from corral.text.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PruneRequest:
    """One ``corral prune`` run. Give explicit dimensions, a budget (``max_parameters`` and/or
    ``max_memory_mb`` of weights at ``dtype``), or both: then the search keeps the explicit ones fixed."""

    model: str | None
    out: str
    constraints: ShapeConstraints = ShapeConstraints()
    max_parameters: int | None = None
    max_memory_mb: float | None = None
    dtype: str = "float32"
    calibration_tokens: int = 4096  # of the train split of the standard library's docstrings
    sequence_length: int = 512
    search_top_k: int = 4  # candidates scored by loss on text; 0 keeps the least importance lost
    search_tokens: int = 1024  # train-split tokens after the calibration ones
    search_space: SearchSpace = SearchSpace()
    cache_dir: str | None = None  # None: no score cache

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.calibration_tokens < 1 or self.sequence_length < 1 or self.search_tokens < 1:
            raise ConfigError("--calibration-tokens, --sequence-length and --search-tokens must be >= 1")
        if self.search_top_k < 0:
            raise ConfigError(f"--search-top-k must be >= 0, got {self.search_top_k}")
        if self.max_parameters is not None and self.max_parameters < 1:
            raise ConfigError(f"--params must be >= 1, got {self.max_parameters}")
        if self.max_memory_mb is not None and self.max_memory_mb <= 0:
            raise ConfigError(f"--memory-mb must be > 0, got {self.max_memory_mb}")
        if self.constraints.is_empty() and not self.has_budget:
            raise ConfigError("nothing to prune: give --layers, --ffn-size, --heads, --kv-heads, --hidden-size, "
                              "--params or --memory-mb")

    @property
    def has_budget(self) -> bool:
        return self.max_parameters is not None or self.max_memory_mb is not None

    def parameter_budget(self) -> int:
        budgets = [] if self.max_parameters is None else [self.max_parameters]
        if self.max_memory_mb is not None:
            budgets.append(int(self.max_memory_mb * 2**20 // DTYPES[self.dtype].itemsize))
        return min(budgets)


@dataclass(frozen=True)
class ScoredCandidate:
    candidate: Candidate
    loss: float | None  # mean next-token cross-entropy on the search tokens; None when not scored


@dataclass
class PruneReport:
    out: str
    shape: PruneShape
    original_parameters: int
    num_parameters: int
    scores_from_cache: bool
    num_calibration_tokens: int
    candidates: list[ScoredCandidate] = field(default_factory=list)  # the search's, best first
    seconds: float = 0.0


def prune_checkpoint(request: PruneRequest, on_stage: Callable[[str], None] | None = None) -> PruneReport:
    """Prune ``request.model`` into ``request.out`` (a new directory); ``on_stage(text)`` names each step."""
    started = time.perf_counter()
    stage = on_stage or (lambda _: None)
    if os.path.exists(request.out):
        raise ConfigError(f"{request.out} already exists: choose a new output directory")
    model_path = request.model if request.model is not None else default_model_path()
    stage("read the model")
    config, lazy_weights = open_checkpoint(model_path, torch.float32)
    # refuse impossible dimensions and budgets before any work
    if not request.constraints.is_empty():
        resolve_shape(config, request.constraints)
    if request.has_budget:
        fitting_shapes(config, request.parameter_budget(), request.search_space, request.constraints)
    weights = lazy_weights.materialize()
    tokenizer = load_tokenizer(model_path)
    calibration, search_ids = _token_sequences(_train_token_ids(tokenizer, request), request, config)

    stage(f"score importance on {calibration.numel()} tokens")
    scores, cached = load_or_compute(request.cache_dir, scores_key(model_path, calibration),
                                     lambda: compute_importance(config, weights, calibration))
    candidates: list[ScoredCandidate] = []
    if request.has_budget:
        stage("search shapes")
        candidates = _search(config, weights, scores, request, search_ids)
        shape = candidates[0].candidate.shape
    else:
        shape = resolve_shape(config, request.constraints)
    plan = plan_pruning(config, scores, shape)
    new_config, new_weights = apply_plan(config, weights, plan)
    report = PruneReport(request.out, shape, count_parameters(config), count_parameters(new_config), cached,
                         calibration.numel(), candidates)
    stage("write")
    record = {
        "source_model": os.path.abspath(model_path),
        "shape": asdict(shape),
        "num_parameters": report.num_parameters,
        "original_parameters": report.original_parameters,
        "calibration_tokens": report.num_calibration_tokens,
        "importance": "Minitron activation magnitudes (width), ShortGPT block influence (depth)",
        "kept": plan_summary(plan),
        "search": [{**asdict(c.candidate.shape), "num_parameters": c.candidate.num_parameters,
                    "importance_lost": c.candidate.importance_lost, "loss": c.loss} for c in candidates],
    }
    write_pruned_dir(request.out, new_config, new_weights, DTYPES[request.dtype], tokenizer, record)
    report.seconds = time.perf_counter() - started
    return report


@functools.lru_cache(maxsize=1)
def _train_text() -> str:
    return stdlib_docstrings("train")  # parses ~50 modules: kept for the next prune in this process


def _train_token_ids(tokenizer: Tokenizer, request: PruneRequest) -> list[int]:
    """Enough of the train split's ids for calibration and search: a prefix of the text where that suffices
    (a token is rarely over 8 characters), else all of it."""
    text = _train_text()
    needed = request.calibration_tokens + request.search_tokens + request.sequence_length
    ids = tokenizer.encode(text[: 8 * needed])
    return ids if len(ids) >= needed else tokenizer.encode(text)


def _token_sequences(
    token_ids: list[int], request: PruneRequest, config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration ``[num_seqs, sequence_length]`` and, after it, the search's ``[num_seqs, length]``."""
    length = min(request.sequence_length, config.max_position_embeddings)
    num_calibration = max(1, request.calibration_tokens // length) * length
    num_search = max(1, request.search_tokens // length) * length
    if num_calibration + num_search > len(token_ids):
        raise ConfigError(f"the calibration text has {len(token_ids)} tokens; --calibration-tokens plus "
                          f"--search-tokens must fit in it")
    calibration = torch.tensor(token_ids[:num_calibration]).view(-1, length)
    search = torch.tensor(token_ids[num_calibration : num_calibration + num_search]).view(-1, length)
    return calibration, search


def _search(
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor],
    scores: ImportanceScores,
    request: PruneRequest,
    search_ids: torch.Tensor,
) -> list[ScoredCandidate]:
    """The search's candidates, the ``search_top_k`` least lost ones scored by their loss on text, best first."""
    ranked = search_shapes(config, scores, request.parameter_budget(), request.search_space, request.constraints)
    if request.search_top_k == 0:
        return [ScoredCandidate(ranked[0], None)]
    scored = []
    for candidate in ranked[: request.search_top_k]:
        new_config, new_weights = apply_plan(config, weights, plan_pruning(config, scores, candidate.shape))
        scored.append(ScoredCandidate(candidate, _loss(new_config, new_weights, search_ids)))
    return sorted(scored, key=lambda s: s.loss if s.loss is not None else math.inf)


@torch.no_grad()
def _loss(config: ModelConfig, weights: Mapping[str, torch.Tensor], token_ids: torch.Tensor) -> float:
    forward = DenseForward(config, weights, float_linears(weights))
    total = 0.0
    for sequence in token_ids.split(1):
        logits = forward(sequence)[0, :-1]
        total += F.cross_entropy(logits, sequence[0, 1:], reduction="sum").item()
    return total / (token_ids.shape[0] * (token_ids.shape[1] - 1))
