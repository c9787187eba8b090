"""The README's weight-format table: each way of running the default model, measured in this one run.

Rows: exact float32 (the reference), the GGUF file's own Q4_1 blocks, and what ``corral quantize`` writes
(int8 per channel; rtn/awq/gptq int4 at one group size, awq and gptq also without their end-to-end
tuning), written under ``--work`` once and reused; each runs with its own activation rounding (the file's:
8 bits; a ``corral quantize`` directory's: 16), and the file, awq and gptq also with the other one
(``activation_bits``). Columns:
weight memory (every tensor the model holds, embedding and LM head included), peak RSS of a process that
loads it and decodes, held-out perplexity and greedy next-token agreement with the exact model
(``corral eval``, 4096 tokens, windows of 1024), decode tok/s of one stream and of 32 (128 and 64 new tokens,
EOS ignored). Each row runs in its own process, so peak RSS is that row's alone:

    .venv/bin/python bench/quant_formats.py [--group-size 64] [--work .bench/quantized] [--output bench/results/quant.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from workloads import provenance

BF16_BYTES_PER_PARAMETER = 2  # SmolLM2's own release is bfloat16: the memory targets are against it
EVAL_ARGS = ["--tokens", "4096", "--window", "1024"]


def measure_row(model: str | None, quantization: str, activation_bits: int | None = None) -> dict[str, Any]:
    """In this process: load, count the weight bytes, time decoding, report the peak RSS."""
    import resource
    import time

    from corral import LLM, SamplingParams

    llm = LLM(model=model, quantization=quantization, kv_cache_memory=64 * 1024**2, max_model_len=1024,
              activation_bits=activation_bits)
    model_module = llm.engine.core.runner.model
    packed = {id(m.packed): m.packed for m in model_module.modules() if getattr(m, "packed", None) is not None}
    weight_bytes = sum(p.nbytes for p in model_module.parameters()) + sum(p.nbytes() for p in packed.values())
    prompt = "def fibonacci(n):\n    "
    rates = {}
    for batch, new_tokens in ((1, 128), (32, 64)):
        sampling = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        llm.generate([prompt] * batch, SamplingParams(max_tokens=4, temperature=0))  # warm-up
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            outputs = llm.generate([f"{prompt}# variant {i}\n" for i in range(batch)], sampling)
            elapsed = time.perf_counter() - start
            best = max(best, sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed)
        rates[batch] = best
    return {
        "weight_bytes": weight_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "decode_tok_s_batch1": rates[1],
        "decode_tok_s_batch32": rates[32],
    }


def corral(*args: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "corral.cli.main", *args, "--output-json", out.name],
                       check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def run_row(label: str, model: str | None, quantization: str, activation_bits: int | None = None) -> dict[str, Any]:
    model_args = [] if model is None else ["--model", model]
    if activation_bits is not None:
        model_args += ["--activation-bits", str(activation_bits)]
    code = f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import quant_formats as q; " \
           f"print(json.dumps(q.measure_row({model!r}, {quantization!r}, {activation_bits!r})))"
    measured = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])
    ppl = corral("eval", "perplexity", *model_args, "--quantization", quantization, *EVAL_ARGS)
    agreement = corral("eval", "agreement", *model_args, "--quantization", quantization,
                       "--reference", _default_model(), "--reference-quantization", "none", *EVAL_ARGS)
    row = {"format": label, **measured, "perplexity": ppl["perplexity"], "agreement": agreement["agreement"]}
    print(json.dumps(row), flush=True)
    return row


def _default_model() -> str:
    from corral.loader.default_model import default_model_path

    return default_model_path()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--work", default=".bench/quantized")
    parser.add_argument("--calibration-tokens", type=int, default=None, help="default: corral quantize's")
    parser.add_argument("--output", default="bench/results/quant.json")
    args = parser.parse_args()

    g = args.group_size
    rows = [("float32 (exact)", None, "none"), ("GGUF Q4_1 g32 (the file)", None, "auto"),
            ("GGUF Q4_1 g32, 16-bit activations", None, "auto", 16)]
    variants = [("int8", "int8", []), ("rtn-int4", f"rtn-int4 g{g}", [])]
    for method in ("awq-int4", "gptq-int4"):  # each with and without the end-to-end tuning of its groups
        variants += [(method, f"{method} g{g} untuned", ["--tune-steps", "0"]), (method, f"{method} g{g}", [])]
    for method, label, extra in variants:
        out = os.path.join(args.work, label.replace(" ", "-"))
        if not os.path.isdir(out):
            tokens = [] if args.calibration_tokens is None else ["--calibration-tokens", str(args.calibration_tokens)]
            subprocess.run([sys.executable, "-m", "corral.cli.main", "quantize", "--method", method,
                            "--group-size", str(g), *tokens, *extra, "--out", out], check=True)
        rows.append((label, out, "auto"))
        if label.endswith(f"int4 g{g}") and method != "rtn-int4":
            rows.append((f"{label}, 8-bit activations", out, "auto", 8))
    results = [run_row(*row) for row in rows]

    from corral.loader import load_checkpoint

    _, weights = load_checkpoint(None)
    bf16_bytes = sum(t.numel() for t in weights.values()) * BF16_BYTES_PER_PARAMETER
    reference = results[0]
    print("\n| format | weight MiB | vs bf16 | peak RSS MiB | perplexity | vs exact | agreement | "
          "tok/s b1 | tok/s b32 |\n|---|---|---|---|---|---|---|---|---|")
    for row in results:
        print(f"| {row['format']} | {row['weight_bytes'] / 2**20:.1f} | {row['weight_bytes'] / bf16_bytes:.1%} | "
              f"{row['peak_rss_bytes'] / 2**20:.0f} | {row['perplexity']:.3f} | "
              f"{row['perplexity'] / reference['perplexity'] - 1:+.1%} | {row['agreement']:.1%} | "
              f"{row['decode_tok_s_batch1']:.0f} | {row['decode_tok_s_batch32']:.0f} |")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump({**provenance(), "bf16_bytes": bf16_bytes, "group_size": g, "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
