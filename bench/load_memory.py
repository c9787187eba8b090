"""Memory of loading the default model (docs/performance.md, "Streaming load"): for each quantization, a fresh
process imports torch (its RSS: torch alone), imports corral and builds ``LLM(quantization=Q)``, then reports
its peak RSS (VmHWM: the whole load, calibration included) and its RSS once loaded (VmRSS). The KV pool sits
on lazily committed memory, so it adds only what is touched. Medians over ``--repeats`` processes.

    .venv/bin/python bench/load_memory.py [--quantization int8 auto none] [--repeats 3] [--quick]
        [--output-json bench/results/load_memory.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from workloads import provenance

RESULT_PREFIX = "LOAD_MEMORY "


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(quantization: str) -> None:
    import time

    import torch  # noqa: F401 - the RSS of torch alone is measured next

    torch_rss = status_mib("VmRSS")
    from corral import LLM

    start = time.perf_counter()
    LLM(quantization=quantization, max_model_len=1024, kv_cache_memory=64 * 1024**2)
    load_s = time.perf_counter() - start
    result = {
        "torch_rss_mib": torch_rss,
        "peak_rss_mib": status_mib("VmHWM"),
        "loaded_rss_mib": status_mib("VmRSS"),
    }
    print(RESULT_PREFIX + json.dumps({**result, "load_s": load_s}), flush=True)


def measure(quantization: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", quantization], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(
        next(line for line in out.splitlines() if line.startswith(RESULT_PREFIX))[len(RESULT_PREFIX) :]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantization", nargs="+", default=["int8", "auto", "none"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="quantization auto, one process")
    parser.add_argument("--output-json", type=Path, default=Path("bench/results/load_memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.quick:
        args.quantization, args.repeats = ["auto"], 1

    results = {}
    for quantization in args.quantization:
        runs = [measure(quantization) for _ in range(args.repeats)]
        results[quantization] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        results[quantization]["runs"] = runs
        row = results[quantization]
        print(
            f"quantization {quantization}: peak RSS {row['peak_rss_mib']:.0f} MiB while loading, "
            f"{row['loaded_rss_mib']:.0f} MiB once loaded, torch alone {row['torch_rss_mib']:.0f} MiB, "
            f"load {row['load_s']:.1f} s (medians of {args.repeats})"
        )
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    report = {**provenance(), "repeats": args.repeats, "results": results}
    args.output_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
