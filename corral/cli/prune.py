"""``corral prune``: structured pruning (depth, FFN width, attention heads, hidden width) by importance from
one calibration pass, written as a plain Llama directory that corral, ``corral quantize`` and HF transformers
load. Heavy imports stay inside ``run``."""

from __future__ import annotations

import argparse
import os
from typing import TypeVar

from corral.errors import ConfigError

Number = TypeVar("Number", int, float)
_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
_SEARCH_FLAGS = ("search_top_k", "search_tokens", "search_width_step", "max_width_pruning", "max_depth_pruning")


def parameter_count(text: str) -> int:
    """``90M``, ``1.5e8``, ``135_000_000`` -> a count."""
    scale = _SUFFIXES.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        return int(float(digits.replace("_", "")) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a parameter count: {text!r} (examples: 90M, 1.5e8)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="GGUF file or HF directory to prune (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the directory to create (must not exist)")
    shape = parser.add_argument_group("target shape (any of these; the rest keep the model's size)")
    shape.add_argument("--layers", type=int, default=None, help="decoder layers to keep (lowest block influence go)")
    shape.add_argument("--ffn-size", type=int, default=None, help="FFN channels per layer to keep")
    shape.add_argument("--heads", type=int, default=None,
                       help="query heads per layer to keep: evenly per KV group if it divides by the group count, "
                            "else whole groups")
    shape.add_argument("--kv-heads", type=int, default=None, help="KV groups (GQA) per layer to keep, whole")
    shape.add_argument("--hidden-size", type=int, default=None, help="hidden (embedding) channels to keep")
    budget = parser.add_argument_group("budget (search the shapes that fit; explicit dimensions stay fixed)")
    budget.add_argument("--params", type=parameter_count, default=None, metavar="N",
                        help="at most N parameters (90M, 1.5e8)")
    budget.add_argument("--memory-mb", type=float, default=None, metavar="MB", help="at most MB MiB of weights at --dtype")
    budget.add_argument("--search-top-k", type=int, default=None,
                        help="candidates, least importance lost first, scored by loss on text (default 4; 0: none)")
    budget.add_argument("--search-tokens", type=int, default=None,
                        help="train-split tokens after the calibration ones to score candidates on (default 1024)")
    budget.add_argument("--search-width-step", type=int, default=None, help="the grid of widths searched (default 64)")
    budget.add_argument("--max-width-pruning", type=float, default=None,
                        help="largest share of any width the search may remove (default 0.5)")
    budget.add_argument("--max-depth-pruning", type=float, default=None,
                        help="largest share of the layers the search may remove (default 0.5)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the written weights' dtype (default float32)")
    parser.add_argument("--calibration-tokens", type=int, default=4096,
                        help="tokens of the standard library's train-split docstrings in the importance pass")
    parser.add_argument("--sequence-length", type=int, default=512, help="tokens per calibration sequence")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="where importance scores are kept, keyed by model and calibration text "
                             "(default: $XDG_CACHE_HOME/corral/prune-scores or ~/.cache/...)")
    parser.add_argument("--no-cache", action="store_true", help="compute the scores afresh and store nothing")


def run(args: argparse.Namespace) -> int:
    from corral.compress.prune import PruneRequest, SearchSpace, ShapeConstraints, prune_checkpoint

    has_budget = args.params is not None or args.memory_mb is not None
    given_search_flags = ["--" + name.replace("_", "-") for name in _SEARCH_FLAGS if getattr(args, name) is not None]
    if given_search_flags and not has_budget:
        raise ConfigError(f"{', '.join(given_search_flags)} only apply with --params or --memory-mb")
    if args.no_cache and args.cache_dir is not None:
        raise ConfigError("--no-cache and --cache-dir contradict each other")
    defaults = SearchSpace()
    space = SearchSpace(
        width_step=_or(args.search_width_step, defaults.width_step),
        max_width_pruning=_or(args.max_width_pruning, defaults.max_width_pruning),
        max_depth_pruning=_or(args.max_depth_pruning, defaults.max_depth_pruning),
    )
    request = PruneRequest(
        model=args.model,
        out=args.out,
        constraints=ShapeConstraints(args.layers, args.ffn_size, args.heads, args.kv_heads, args.hidden_size),
        max_parameters=args.params,
        max_memory_mb=args.memory_mb,
        dtype=args.dtype,
        calibration_tokens=args.calibration_tokens,
        sequence_length=args.sequence_length,
        search_top_k=_or(args.search_top_k, PruneRequest.search_top_k),
        search_tokens=_or(args.search_tokens, PruneRequest.search_tokens),
        search_space=space,
        cache_dir=None if args.no_cache else (args.cache_dir or _default_cache_dir()),
    )
    report = prune_checkpoint(request, on_stage=lambda text: print(f"{text} ...", flush=True))
    for scored in report.candidates:
        loss = "" if scored.loss is None else f", loss {scored.loss:.4f}"
        print(f"  candidate {scored.candidate.shape.describe()}: {scored.candidate.num_parameters:,} params, "
              f"importance lost {scored.candidate.importance_lost:.3f}{loss}")
    source = "the cache" if report.scores_from_cache else f"{report.num_calibration_tokens} calibration tokens"
    print(f"wrote {report.out}: {report.shape.describe()}, {report.num_parameters:,} of "
          f"{report.original_parameters:,} parameters ({report.num_parameters / report.original_parameters:.1%}); "
          f"importance scores from {source}; {report.seconds:.1f} s")
    return 0


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "corral", "prune-scores")


def _or(value: Number | None, default: Number) -> Number:
    return default if value is None else value
