"""``corral prune`` on the default model: quality of pruned-only models (no distillation) and how they compose
with ``corral quantize``.

Four shapes, about 2/3 and about 1/2 of the parameters, each depth-first (whole layers, lowest block
influence first, every width kept) and width-first (every layer kept, the widths searched under the
parameter budget). For each, and for the unpruned model: held-out perplexity and greedy next-token
agreement with the unpruned float model (windows of the held-out standard-library docstrings, as
``corral eval``), then int8 and rtn-int4 (``corral quantize``, no tuning): weight bytes, perplexity, decode
tok/s of one stream. Work directories go under ``--work``; scores are computed once and cached there.

    .venv/bin/python bench/prune_bench.py [--tokens 2048] [--window 512] [--work .bench/prune]
        [--output bench/results/prune.json] [--rows ROW ...] [--quantize ROW ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any

from workloads import provenance

# about 2/3 and 1/2 of SmolLM2-135M's 134.5M parameters (its embedding alone holds 28.3M)
SHAPES: dict[str, dict[str, Any]] = {
    "depth-2/3": {"layers": 17},
    "width-2/3": {"params": 89_700_000, "layers": 30},
    "depth-1/2": {"layers": 11},
    "width-1/2": {"params": 67_300_000, "layers": 30},
}
QUANTIZE_METHODS = ("int8", "rtn-int4")


def prune(name: str, spec: dict[str, Any], work: str) -> tuple[str, dict[str, Any]]:
    from corral.compress.prune import PruneRequest, ShapeConstraints, prune_checkpoint

    out = os.path.join(work, name.replace("/", "_"))
    shutil.rmtree(out, ignore_errors=True)
    request = PruneRequest(
        model=None, out=out, constraints=ShapeConstraints(num_hidden_layers=spec.get("layers")),
        max_parameters=spec.get("params"), cache_dir=os.path.join(work, "scores"),
    )
    report = prune_checkpoint(request)
    return out, {
        "shape": vars(report.shape), "num_parameters": report.num_parameters,
        "share_of_parameters": report.num_parameters / report.original_parameters,
        "prune_seconds": report.seconds, "scores_from_cache": report.scores_from_cache,
        "search": [{"shape": vars(c.candidate.shape), "num_parameters": c.candidate.num_parameters,
                    "importance_lost": c.candidate.importance_lost, "loss": c.loss} for c in report.candidates],
    }


def load(model: str | None, quantization: str = "none"):
    from corral.runtime import EngineArgs, build_engine

    # windows run as dense prefills with their own scratch K/V (as corral eval does): a minimal pool
    return build_engine(EngineArgs(model=model, quantization=quantization, max_model_len=16,
                                   kv_cache_memory=4 * 1024**2))


def quality(engine, teacher, windows) -> dict[str, float]:
    from corral.models import evaluate

    model = engine.core.runner.model
    result = {"perplexity": evaluate.perplexity(model, windows).perplexity}
    if teacher is not None:
        result["agreement"] = evaluate.agreement(model, teacher.core.runner.model, windows).rate
    return result


def decode_rate(model_dir: str) -> tuple[int, float]:
    """(weight bytes held by the model, best of 2 decode rates of one stream: 64 new tokens, EOS ignored)."""
    from corral import LLM, SamplingParams

    llm = LLM(model=model_dir, quantization="auto", kv_cache_memory=64 * 1024**2, max_model_len=256)
    module = llm.engine.core.runner.model
    packed = {id(m.packed): m.packed for m in module.modules() if getattr(m, "packed", None) is not None}
    weight_bytes = sum(p.nbytes for p in module.parameters()) + sum(p.nbytes() for p in packed.values())
    prompt = "def fibonacci(n):\n    "
    llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)  # warm-up
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        out = llm.generate([prompt], SamplingParams(max_tokens=64, temperature=0, ignore_eos=True), use_tqdm=False)
        best = max(best, len(out[0].outputs[0].token_ids) / (time.perf_counter() - start))
    return weight_bytes, best


def quantized_rows(model: str | None, label: str, work: str, windows) -> dict[str, Any]:
    from corral.compress.quantize import quantize_checkpoint

    rows = {}
    for method in QUANTIZE_METHODS:
        out = os.path.join(work, f"{label.replace('/', '_')}-{method}")
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        quantize_checkpoint(model, method, out, group_size=64, calibration_tokens=512, tuning=None)
        seconds = time.perf_counter() - started
        weight_bytes, rate = decode_rate(out)
        rows[method] = {"quantize_seconds": seconds, "weight_bytes": weight_bytes, "decode_tok_s_batch1": rate,
                        **quality(load(out, "auto"), None, windows)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens scored")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--work", default=".bench/prune")
    parser.add_argument("--output", default="bench/results/prune.json")
    rows_help = "unpruned, " + ", ".join(SHAPES)
    parser.add_argument("--rows", nargs="*", default=["unpruned", *SHAPES], help=f"rows to measure (of {rows_help})")
    parser.add_argument("--quantize", nargs="*", default=None,
                        help="rows also measured through corral quantize int8 / rtn-int4 (default: every row; "
                             "give none for no such column)")
    args = parser.parse_args()

    from corral.models import evaluate
    from corral.quantization.corpus import stdlib_docstrings

    os.makedirs(args.work, exist_ok=True)
    teacher = load(None)
    token_ids = teacher.tokenizer.encode(stdlib_docstrings("heldout"))[: args.tokens]
    windows = evaluate.sliding_windows(token_ids, args.window, args.window // 2)
    quantize = set(args.rows if args.quantize is None else args.quantize)
    rows: dict[str, Any] = {}
    if "unpruned" in args.rows:
        rows["unpruned"] = {"num_parameters": sum(p.numel() for p in teacher.core.runner.model.parameters()),
                            **quality(teacher, None, windows)}
        if "unpruned" in quantize:
            rows["unpruned"]["quantized"] = quantized_rows(None, "unpruned", args.work, windows)
        print(json.dumps({"unpruned": rows["unpruned"]}), flush=True)
    for name, spec in SHAPES.items():
        if name not in args.rows:
            continue
        out, row = prune(name, spec, args.work)
        row.update(quality(load(out), teacher, windows))
        if name in quantize:
            row["quantized"] = quantized_rows(out, name, args.work, windows)
        rows[name] = row
        print(json.dumps({name: row}), flush=True)
    result = {**provenance(), "held_out_tokens": len(token_ids), "window": args.window, "stride": args.window // 2,
              "distilled": False, "rows": rows}
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
        file.write("\n")


if __name__ == "__main__":
    main()
