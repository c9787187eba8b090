"""``corral prune``, then ``corral distill`` from the unpruned model, on the default model (issue 27): how much of the
log-perplexity lost to pruning a fixed training budget recovers, and how the result composes with
``corral quantize``.

For each configuration (``--configs``; width-2/3 and depth-2/3 as in docs/pruning.md's table): prune with the
CLI, score the pruned model, distill it with the CLI (the default model, dequantized, is the teacher) for the
configuration's steps, score it again. Scores are bench/prune_bench.py's, on the same held-out windows: perplexity
and greedy agreement with the unpruned float model. The recovered share is
``(log ppl_pruned - log ppl_distilled) / (log ppl_pruned - log ppl_unpruned)``; issue 27's target is 0.5 at 2/3.

Then (``--quantize CONFIG``) the distilled model of that configuration and the unpruned model each go through
``corral quantize`` int8 and rtn-int4 (neither needs calibration): weight bytes on disk, perplexity, and the
decode rate of one stream (``--decode-tokens`` new tokens, same prompt, EOS ignored), the models measured in
turn, ``--repeats`` rounds, median per model, so a busy host slows them alike.

    OMP_NUM_THREADS=1 .venv/bin/python bench/prune_distill_bench.py [--work /tmp/prune-distill]
        [--configs width-2/3 depth-2/3] [--steps width-2/3=32 depth-2/3=16] [--quantize width-2/3] [--reuse]

``--reuse`` takes every pruned or distilled directory (and distill report) already in ``--work`` as it is, so a
run that was cut short, or whose commands ran by hand, is scored without training again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from typing import Any

from prune_bench import load, quality
from workloads import provenance

from corral.cli.main import main as corral_main

# corral prune flags of docs/pruning.md's rows; optimizer steps (a step sees 2048 tokens) and the local text prepared
# (default: steps x 2048; width-2/3's run was prepared for 64 steps and cut to 32 to fit its time box)
CONFIGS: dict[str, dict[str, Any]] = {
    "width-2/3": {"prune": ["--params", "89.7M", "--layers", "30"], "steps": 32, "train_tokens": 131072},
    "depth-2/3": {"prune": ["--layers", "17"], "steps": 16},
    "width-1/2": {"prune": ["--params", "67.3M", "--layers", "30"], "steps": 64},
    "depth-1/2": {"prune": ["--layers", "11"], "steps": 16},
}
# the lessons of docs/distillation.md's runs: lr 1e-3 with a few warm-up steps (one was too few), few teacher samples
DISTILL_FLAGS = ["--teacher-samples", "8", "--heldout-tokens", "2048", "--lr", "1e-3", "--warmup-steps", "4",
                 "--checkpoint-every", "8"]
TOKENS_PER_STEP = 2048  # corral distill's defaults: 2 windows x 4 micro-batches x 256 tokens
QUANTIZE_METHODS = ("int8", "rtn-int4")
PROMPT = "def fibonacci(n):\n    "


def cli(argv: list[str]) -> None:
    status = corral_main(argv)
    if status != 0:
        raise SystemExit(f"corral {' '.join(argv)} exited {status}")


def recovered_share(unpruned: float, pruned: float, distilled: float) -> float:
    """The share of the log-perplexity lost to pruning that distillation won back (1: all of it, < 0: worse)."""
    return (math.log(pruned) - math.log(distilled)) / (math.log(pruned) - math.log(unpruned))


def prune_command(name: str, work: str) -> list[str]:
    return ["prune", *CONFIGS[name]["prune"], "--cache-dir", os.path.join(work, "scores"),
            "--out", os.path.join(work, f"{slug(name)}-pruned")]


def distill_command(name: str, work: str, steps: int) -> list[str]:
    base = os.path.join(work, slug(name))
    train_tokens = CONFIGS[name].get("train_tokens", steps * TOKENS_PER_STEP)
    return ["distill", "--student", f"{base}-pruned", "--out", f"{base}-distilled", "--steps", str(steps),
            "--train-tokens", str(train_tokens), *DISTILL_FLAGS, "--output-json", f"{base}-distill.json"]


def slug(name: str) -> str:
    return name.replace("/", "_")


def prune_and_distill(name: str, steps: int, work: str, reuse: bool, teacher, windows, unpruned_ppl: float) -> dict:
    base = os.path.join(work, slug(name))
    row: dict[str, Any] = {"prune_command": "corral " + " ".join(prune_command(name, work))}
    if not (reuse and os.path.isdir(f"{base}-pruned")):
        shutil.rmtree(f"{base}-pruned", ignore_errors=True)
        cli(prune_command(name, work))
    with open(os.path.join(f"{base}-pruned", "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    row["shape"] = {k: config[k] for k in ("num_hidden_layers", "intermediate_size", "num_attention_heads",
                                           "num_key_value_heads", "hidden_size")}
    row["pruned"] = quality(load(f"{base}-pruned"), teacher, windows)
    print(json.dumps({name: row}), flush=True)

    command = distill_command(name, work, steps)
    row["distill_command"] = "corral " + " ".join(command)
    wall_file = f"{base}-distill.wall"
    if not (reuse and os.path.isdir(f"{base}-distilled")):
        for path in (f"{base}-distilled", f"{base}-distilled.distill"):
            shutil.rmtree(path, ignore_errors=True)
        started = time.perf_counter()
        cli(command)
        with open(wall_file, "w", encoding="utf-8") as f:
            f.write(f"{time.perf_counter() - started}\n")
    with open(f"{base}-distill.json", encoding="utf-8") as f:
        report = json.load(f)
    wall = float(open(wall_file, encoding="utf-8").read()) if os.path.exists(wall_file) else None
    row["budget"] = {"steps": report["num_steps"], "steps_taken": report["steps_taken"],
                     "tokens_seen": report["tokens_seen"], "text_windows": report["num_text_windows"],
                     "teacher_sampled_windows": report["num_sampled_windows"],
                     "sequence_length": report["sequence_length"], "train_seconds": report["train_seconds"],
                     "wall_seconds": wall, "step_losses": report["step_losses"]}
    row["distill_report_scores"] = {k: report[k] for k in ("teacher", "student_before", "student_after")}
    row["distilled"] = quality(load(f"{base}-distilled"), teacher, windows)
    row["recovered_share"] = recovered_share(unpruned_ppl, row["pruned"]["perplexity"],
                                             row["distilled"]["perplexity"])
    print(json.dumps({name: row}), flush=True)
    return row


def weight_bytes_on_disk(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".safetensors"))


def quantize_and_time(sources: dict[str, str | None], work: str, reuse: bool, windows, tokens: int,
                      repeats: int) -> dict[str, Any]:
    """``corral quantize`` every source (label -> directory, None: the default model) with each method; then
    decode rates, every model once per round so the host's load falls on all of them alike."""
    from corral import LLM, SamplingParams

    rows: dict[str, Any] = {}
    outs: dict[str, str] = {}
    for label, source in sources.items():
        for method in QUANTIZE_METHODS:
            out = os.path.join(work, f"{slug(label)}-{method}")
            command = ["quantize", "--method", method, "--out", out] + ([] if source is None else ["--model", source])
            row: dict[str, Any] = {"command": "corral " + " ".join(command)}
            if not (reuse and os.path.isdir(out)):
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                cli(command)
                row["quantize_seconds"] = time.perf_counter() - started
            row["weight_bytes_on_disk"] = weight_bytes_on_disk(out)
            row.update(quality(load(out, "auto"), None, windows))
            rows[f"{label} {method}"], outs[f"{label} {method}"] = row, out
            print(json.dumps({f"{label} {method}": row}), flush=True)
    engines = {key: LLM(model=out, quantization="auto", kv_cache_memory=64 * 1024**2, max_model_len=256)
               for key, out in outs.items()}
    greedy = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    rates: dict[str, list[float]] = {key: [] for key in rows}
    for llm in engines.values():
        llm.generate([PROMPT], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)  # warm-up
    for _ in range(repeats):
        for key, llm in engines.items():
            started = time.perf_counter()
            out = llm.generate([PROMPT], greedy, use_tqdm=False)
            rates[key].append(len(out[0].outputs[0].token_ids) / (time.perf_counter() - started))
    for key, row in rows.items():
        row["decode_tok_s"] = rates[key]
        row["decode_tok_s_median"] = statistics.median(rates[key])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/prune-distill", help="models and runs (keep it outside the repo)")
    parser.add_argument("--configs", nargs="*", default=["width-2/3", "depth-2/3"], choices=list(CONFIGS))
    parser.add_argument("--steps", nargs="*", default=[], metavar="CONFIG=STEPS",
                        help="optimizer steps of a configuration's distillation (default: CONFIGS)")
    parser.add_argument("--quantize", nargs="*", default=["width-2/3"], metavar="CONFIG",
                        help="distilled configurations also measured through corral quantize, beside the unpruned")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens scored (as bench/prune_bench.py)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--reuse", action="store_true", help="keep what --work already holds")
    parser.add_argument("--note", default=None, help="a line stored with the results")
    parser.add_argument("--output", default="bench/results/prune_distill.json")
    args = parser.parse_args()
    steps = {name: spec["steps"] for name, spec in CONFIGS.items()}
    for item in args.steps:
        name, _, value = item.partition("=")
        if name not in CONFIGS or not value.isdigit():
            parser.error(f"--steps takes CONFIG=STEPS with CONFIG one of {', '.join(CONFIGS)}, got {item!r}")
        steps[name] = int(value)
    if unknown := set(args.quantize) - set(args.configs):
        parser.error(f"--quantize names configurations not in --configs: {', '.join(sorted(unknown))}")

    from corral.models import evaluate
    from corral.quantization.corpus import stdlib_docstrings

    os.makedirs(args.work, exist_ok=True)
    teacher = load(None)
    token_ids = teacher.tokenizer.encode(stdlib_docstrings("heldout"))[: args.tokens]
    windows = evaluate.sliding_windows(token_ids, args.window, args.window // 2)
    unpruned = {"num_parameters": sum(p.numel() for p in teacher.core.runner.model.parameters()),
                **quality(teacher, None, windows)}
    print(json.dumps({"unpruned": unpruned}), flush=True)
    rows = {name: prune_and_distill(name, steps[name], args.work, args.reuse, teacher, windows,
                                    unpruned["perplexity"]) for name in args.configs}
    del teacher
    sources: dict[str, str | None] = {"unpruned": None}
    sources.update({f"{name}-distilled": os.path.join(args.work, f"{slug(name)}-distilled") for name in args.quantize})
    quantized = quantize_and_time(sources, args.work, args.reuse, windows, args.decode_tokens, args.repeats) \
        if args.quantize else {}
    result = {**provenance(), "held_out_tokens": len(token_ids), "window": args.window, "stride": args.window // 2,
              "note": args.note, "unpruned": unpruned, "rows": rows, "quantized": quantized,
              "decode": {"prompt": PROMPT, "new_tokens": args.decode_tokens, "repeats": args.repeats}}
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
        file.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
