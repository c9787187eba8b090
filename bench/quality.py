"""Quality of corral's paths against the exact fp32 model (docs/performance.md, docs/quantization.md), with
``corral eval`` on the held-out standard-library docstrings, each run in its own process:

- perplexity and greedy next-token agreement with the exact model (4,096 tokens, windows of 1024): the GGUF's
  own blocks with fp32 K/V, the defaults (those blocks and the int8 K/V cache), and ``quantization="int8"``;
- the int8 K/V cache against the fp32 one on the same weights (2,048 tokens): exact weights and the GGUF's
  blocks, agreement with the same weights' fp32-K/V run.

``make bench-quality`` runs it:

    .venv/bin/python bench/quality.py [--tokens 4096] [--window 1024] [--kv-tokens 2048] [--quick]
        [--output-json bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quant_formats import corral
from workloads import provenance

INT8_KV = ["--kv-cache-dtype", "int8"]
EXACT, EXACT_2K, GGUF_2K = "exact fp32", "exact fp32, 2k", "GGUF blocks, fp32 K/V, 2k"
# label: (which token count, the path's `corral eval` flags, the agreement reference's quantization or None,
# the row its perplexity is compared with)
ROWS = {
    EXACT: ("tokens", ["--quantization", "none"], None, EXACT),
    "GGUF blocks, fp32 K/V": ("tokens", ["--quantization", "auto"], "none", EXACT),
    "GGUF blocks, int8 K/V (the defaults)": ("tokens", ["--quantization", "auto", *INT8_KV], "none", EXACT),
    "int8 (fbgemm, SmoothQuant), fp32 K/V": ("tokens", ["--quantization", "int8"], "none", EXACT),
    EXACT_2K: ("kv_tokens", ["--quantization", "none"], None, EXACT_2K),
    "exact weights, int8 K/V, 2k": ("kv_tokens", ["--quantization", "none", *INT8_KV], "none", EXACT_2K),
    GGUF_2K: ("kv_tokens", ["--quantization", "auto"], None, EXACT_2K),
    "GGUF blocks, int8 K/V, 2k": ("kv_tokens", ["--quantization", "auto", *INT8_KV], "auto", GGUF_2K),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--kv-tokens", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="the first two rows, 128 tokens, windows of 64")
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/quality.json"))
    args = parser.parse_args()
    labels = list(ROWS)[:2] if args.quick else list(ROWS)
    if args.quick:
        args.tokens, args.kv_tokens, args.window = 128, 128, 64

    results: dict[str, dict] = {}
    for label in labels:
        count, flags, reference, _ = ROWS[label]
        window = ["--tokens", str(getattr(args, count)), "--window", str(args.window)]
        row = {"flags": flags, "perplexity": corral("eval", "perplexity", *flags, *window)}
        if reference is not None:
            row["agreement"] = corral(
                "eval", "agreement", *flags, "--reference-quantization", reference, *window
            )
        results[label] = row
        agree = row.get("agreement", {}).get("agreement")
        print(
            f"{label}: perplexity {row['perplexity']['perplexity']:.3f}"
            + (f", agreement {agree:.1%}" if agree is not None else ""),
            flush=True,
        )

    print(
        "\n| path | tokens | perplexity | vs | against | agreement | reference |\n|---|---|---|---|---|---|---|"
    )
    for label, row in results.items():
        ppl, base, agree = row["perplexity"], ROWS[label][3], row.get("agreement")
        vs = ppl["perplexity"] / results[base]["perplexity"]["perplexity"] - 1
        print(
            f"| {label} | {ppl['num_tokens']} | {ppl['perplexity']:.3f} | {vs:+.1%} | {base} | "
            + (f"{agree['agreement']:.1%} | {agree['reference_quantization']} |" if agree else "- | - |")
        )
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **provenance(),
        "tokens": args.tokens,
        "kv_tokens": args.kv_tokens,
        "window": args.window,
        "results": results,
    }
    args.output_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
