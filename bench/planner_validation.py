"""The planner against measurement: corral's engine on this machine, and published serving figures.

On this machine: corral's offline engine measures single-stream decode, 32 streams and TTFT at 128, 512 and
2,048 prompt tokens (corral/bench/calibrate.py); the planner's factors are fitted on the decode and the
512-token TTFT (`corral plan calibrate`'s rule) and every other figure is predicted only. Errors are given with
the default factors and with the calibrated ones.

Published anchors (GPU rows, whose factors no measurement here calibrates): each with its source. Predicted
with the default GPU factors and latencies (kernels, all-reduce calls; roofline.DEFAULT_EFFICIENCY, sourced
there), and with GPU factors fitted on the first NIM row under the same latencies and checked on the rest.

    OMP_NUM_THREADS=2 .venv/bin/python bench/planner_validation.py [--from OBSERVATIONS.json] [--threads 2]

Writes bench/results/planner_validation.json (host, date, command, every row).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from corral.planner.calibration import Observation, fit, predict, relative_error, with_factors
from corral.planner.calibration_job import calibrate, observations_to_json, read_observations
from corral.planner.calibration_store import HostIdentity, this_host
from corral.planner.hardware import GIGA, HARDWARE, TERA, GiB, Hardware, hardware
from corral.planner.models import ModelShape
from corral.planner.plan import Plan, PlanRequest, build_plan
from corral.planner.roofline import DEFAULT_EFFICIENCY

HERE = os.path.dirname(os.path.abspath(__file__))
TRTLLM_URL = ("https://github.com/NVIDIA/TensorRT-LLM/blob/main/docs/source/performance/perf-overview.md "
              "(commit 00f3768)")
NIM_URL = "https://docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance.md"
NIM_SOURCE = (f"NVIDIA NIM LLM benchmarking guide, Performance page ({NIM_URL}), Llama-3.3-70b-instruct, NIM "
              "1.8.0, 2 x H100 80G, fp8 TP2; read 2026-12-07 through this project's search index")
LLM_ANALYSIS_URL = "https://github.com/cli99/llm-analysis/blob/main/examples/fastertransformer/README.md"
LLM_ANALYSIS_SOURCE = (f"llm-analysis's FasterTransformer case ({LLM_ANALYSIS_URL}, commit b60b392), quoting "
                       "kipply's 'Transformer Inference Arithmetic' benchmarks: a 13B GPT on A100 40GB, fp16, "
                       "512-token context, batch 1; read 2026-12-07")
_SEARCHED = ("searched 2026-12-07 in this project's index (docs and pages corpora, GitHub code): the HTML rendering "
             "of the page keeps the tables but drops their headings, and the stored markdown rendering ends inside "
             "the Llama 3.3 70B section; no other copy was found. Planning it would mean guessing the GPU count, "
             "precision and lengths")
UNUSED = [
    {"figure": "NIM Llama-3.1-8b-instruct, NIM 1.8.0, concurrency 1: TTFT 10.26 ms, ITL 4.63 ms", "source": NIM_URL,
     "why_not_used": _SEARCHED},
    {"figure": "NIM Llama-3.1-70b-instruct, NIM 1.3.0, concurrency 1: TTFT 25.05 ms, ITL 13.21 ms", "source": NIM_URL,
     "why_not_used": f"as above ({_SEARCHED[:7]}...); Llama 3.3 70B's rows, the same shapes, are used instead"},
    {"figure": "NIM Llama-3.3-70b-instruct 1.8.0, 5000 in / 500 out, TTFT at concurrency 5 / 25 / 50: 546.7 / "
               "688.69 / 834.51 ms (predicted 411 / 413 / 415)", "source": NIM_URL,
     "why_not_used": "a TTFT under concurrency includes waiting behind other prompts' prefills, which the planner "
                     "does not model (its TTFT is one prompt's prefill beside B - 1 decodes; docs/planner.md, Limits)"},
    {"figure": "NIM Llama-3.3-70b-instruct 1.8.0, 5000 in / 500 out, concurrency 100-250: ITL 92.9-93.2 ms",
     "source": NIM_URL,
     "why_not_used": "more sequences than the planned KV pool holds at 5,500 tokens (84): requests queue"},
    {"figure": "TensorRT-LLM performance overview: Llama 3.1 8B FP8 on one H100 and Llama 3.3 70B FP8 on two, "
               "total output tokens/s at maximum load for ten ISL/OSL pairs", "source": TRTLLM_URL,
     "why_not_used": "offline maximum-throughput runs: the batch size is trtllm-bench's own choice and the KV-cache "
                     "dtype and memory fraction (0.90 or 0.95) are not stated per row"},
]

# llm-analysis's test-13b (GPT: a 2-matrix MLP of 4 x hidden); as a gated MLP of the same weights per layer
# (3 x 13,653 x 5,120 against 2 x 20,480 x 5,120: 0.002% apart).
TEST_13B = ModelShape("test-13b (llm-analysis)", vocab_size=50272, hidden_size=5120, intermediate_size=13653,
                      num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                      max_position_embeddings=2048, torch_dtype="fp16", source="llm-analysis model_configs/test-13b.json")
A100_40GB = Hardware("a100-40gb", "gpu", 40 * GiB, 1.555 * TERA, {"fp32": 19.5 * TERA, "bf16": 312 * TERA},
                     1.0, "bf16", "NVIDIA A100 40GB SXM4 datasheet: 1,555 GB/s, 312 TFLOP/s fp16 dense, NVLink "
                     "600 GB/s (300 each way)", "not priced", "NVIDIA A100 40GB",
                     interconnect_bytes_per_s=300 * GIGA)


def anchors() -> list[dict[str, Any]]:
    """Each: the plan to predict it with, the observation, the source."""
    nim = {"model": "llama-3.1-70b", "hardware": "h100", "format": "fp8", "tp": 2, "kv_dtype": "fp8", "source": NIM_SOURCE}
    ft = {"model": TEST_13B, "hardware": A100_40GB, "format": "fp16", "tp": 1, "kv_dtype": "fp16", "source": LLM_ANALYSIS_SOURCE}
    return [
        {**nim, "name": "NIM 70B, 5000 in / 500 out, concurrency 1, ITL", "obs": Observation("decode_tok_s", 1 / 0.01858, 5000, 500)},
        {**nim, "name": "NIM 70B, 5000 in / 500 out, concurrency 1, TTFT", "obs": Observation("ttft_s", 0.40677, 5000)},
        {**nim, "name": "NIM 70B, 500 in / 2000 out, concurrency 1, ITL", "obs": Observation("decode_tok_s", 1 / 0.01891, 500, 2000)},
        {**nim, "name": "NIM 70B, 500 in / 2000 out, concurrency 1, TTFT", "obs": Observation("ttft_s", 0.04777, 500)},
        {**nim, "name": "NIM 70B, 5000 in / 500 out, concurrency 5, ITL", "obs": Observation("tpot_s", 0.02183, 5000, 500, 5)},
        {**nim, "name": "NIM 70B, 5000 in / 500 out, concurrency 25, ITL", "obs": Observation("tpot_s", 0.03875, 5000, 500, 25)},
        {**nim, "name": "NIM 70B, 5000 in / 500 out, concurrency 50, ITL", "obs": Observation("tpot_s", 0.05973, 5000, 500, 50)},
        {**ft, "name": "FasterTransformer 13B, TP1, 512-token prefill", "obs": Observation("ttft_s", 0.06317, 512)},
        {**ft, "name": "FasterTransformer 13B, TP1, decode per token", "obs": Observation("decode_tok_s", 1 / 0.0220, 512, 10)},
        {**ft, "tp": 2, "name": "FasterTransformer 13B, TP2, 512-token prefill", "obs": Observation("ttft_s", 0.04545, 512)},
        {**ft, "tp": 2, "name": "FasterTransformer 13B, TP2, decode per token", "obs": Observation("decode_tok_s", 1 / 0.0135, 512, 10)},
    ]


def anchor_plan(a: dict[str, Any]) -> Plan:
    model = a["model"] if isinstance(a["model"], ModelShape) else None
    hw = a["hardware"] if isinstance(a["hardware"], Hardware) else hardware(a["hardware"])
    request = PlanRequest(model=None if model else a["model"], format=a["format"], kv_dtype=a["kv_dtype"],
                          tensor_parallel_size=a["tp"], context_len=2048 if model else None)
    return build_plan(request, hardware_row=hw, model_shape=model)


def anchor_rows() -> tuple[list[dict[str, Any]], dict[str, float]]:
    items = anchors()
    plans = [anchor_plan(a) for a in items]
    # GPU factors fitted on NIM's first table (its ITL and TTFT at concurrency 1), checked on the rest
    fit_steps = plans[0].steps
    assert fit_steps is not None
    fitted = fit([items[0]["obs"], items[1]["obs"]], fit_steps, plans[0].max_num_batched_tokens)
    rows = []
    for a, p in zip(items, plans, strict=True):
        assert p.steps is not None
        o = a["obs"]
        default = predict(o, p.steps, p.max_num_batched_tokens)
        calibrated = predict(o, with_factors(p.steps, fitted.factors), p.max_num_batched_tokens)
        value, show = o.value, o.display
        if o.kind == "decode_tok_s":  # published as ms per token
            value, default, calibrated, show = 1 / value, 1 / default, 1 / calibrated, lambda v: v * 1000
        rows.append({"anchor": a["name"], "role": "fit" if o in fitted.fit_on else "validation",
                     "unit": "ms", "published": show(value), "predicted_default": show(default),
                     "error_default": relative_error(default, value), "predicted_gpu_fit": show(calibrated),
                     "error_gpu_fit": relative_error(calibrated, value), "source": a["source"]})
    return rows, asdict(fitted.factors)


def recorded_host(path: str) -> dict[str, Any] | None:
    """The host an observations file written by this script was measured on (its CPU row decides the
    default-factor predictions), or None."""
    with open(path) as f:
        host = json.load(f).get("host")
    return host if isinstance(host, dict) and host.get("row") in HARDWARE else None


def host_rows(observations: list[Observation], source: str,
              host: HostIdentity) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cal = calibrate(observations, host, source)
    return cal.validation, {"factors": asdict(cal.factors), "compute_dtype": cal.compute_dtype, "notes": cal.notes}


def print_table(title: str, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    print(f"\n{title}")
    for r in rows:
        cells = [f"{r[keys[0]]:<58}", f"{r['role']:<10}"] + [
            f"{r[k]:>+8.0%}" if k.startswith("error") else f"{r[k]:>10,.1f}" for k in keys[1:]]
        print("  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_file", default=None, help="observations instead of measuring")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="record that other work shared the host during the run")
    parser.add_argument("--note", default="", help="how the measurement was taken, recorded with the results")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "planner_validation.json"))
    args = parser.parse_args()
    host = this_host()
    measured_on = {"row": host.row, "cpu_model": host.cpu_model, "flags": list(host.flags),
                   "machine": platform.machine(), "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if args.from_file:
        observations, source = read_observations(args.from_file)
        if (recorded := recorded_host(args.from_file)) is not None:
            measured_on = recorded
            host = HostIdentity(recorded["row"], recorded.get("cpu_model", ""), tuple(recorded.get("flags", ())))
    else:
        from corral.bench.calibrate import MeasureSettings, measure

        observations = measure(settings=MeasureSettings(threads=args.threads, repeats=args.repeats))
        source = f"measured by bench/planner_validation.py, threads {args.threads or 'default'}"
    here, fitted = host_rows(observations, source, host)
    keys = ("label", "measured", "predicted_default", "error_default", "predicted_calibrated", "error_calibrated")
    print_table("This machine: measured, default factors (error), calibrated (error)", here, keys)
    print(f"fitted: {fitted['factors']} for {fitted['compute_dtype']} products")
    published, gpu_factors = anchor_rows()
    keys = ("anchor", "published", "predicted_default", "error_default", "predicted_gpu_fit", "error_gpu_fit")
    print_table("Published anchors (ms): published, default GPU factors (error), GPU factors fitted on NIM's "
                "first row (error)", published, keys)
    print(f"GPU factors fitted on the NIM 70B 5000/500 row: {gpu_factors}")
    gpu = DEFAULT_EFFICIENCY["gpu"]
    print(f"GPU latencies (default and fit): {gpu.kernels_per_layer} kernels a layer x {gpu.kernel_latency_s * 1e6:g} us, "
          f"{gpu.allreduce_latency_s * 1e6:g} us an all-reduce call, links at {gpu.link}")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "command": [sys.argv[0], *sys.argv[1:]],
        "host": measured_on,  # where the observations were measured (with --from: as that file records)
        "busy_host": args.busy, "note": args.note, "observations": observations_to_json(observations), "source": source,
        "this_machine": {"rows": here, **fitted}, "anchors": {"rows": published, "gpu_factors_fitted": gpu_factors,
                    "gpu_default_efficiency": asdict(DEFAULT_EFFICIENCY["gpu"])},
        "anchors_not_used": UNUSED,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
