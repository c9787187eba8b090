"""``corral plan``: memory, latency per batch, replicas and cost of serving a model on given hardware
(docs/planner.md); ``--recommend`` ranks the choices; ``corral plan calibrate`` fits this host's factors.
Imports neither torch nor the engine (``calibrate --run`` alone measures the engine), so it answers in well
under a second."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from corral.planner.calibration_store import StoredCalibration
    from corral.planner.plan import PlanRequest

CALIBRATION_ENV = "CORRAL_CALIBRATION"
_CALIBRATE_ONLY = ("from_file", "run_engine", "out", "save_measurements", "step_overhead_ms", "threads")


def default_calibration_path() -> str:
    """$CORRAL_CALIBRATION, else $XDG_CONFIG_HOME/corral/calibration.json (~/.config by default)."""
    if os.environ.get(CALIBRATION_ENV):
        return os.environ[CALIBRATION_ENV]
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "corral", "calibration.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("calibrate",), default=None,
                        help="calibrate: fit this host's efficiency factors (--from FILE or --run) and store them")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="PATH|NAME",
                       help="a .gguf file, a config.json or a directory holding one, or a built-in name "
                            "(`--list-models`); default: SmolLM2-135M-Instruct's Q4_1 file")
    model.add_argument("--format", default="auto", metavar="FORMAT",
                       help="weights: fp32, bf16, fp16, fp8, int8, int4 (see --group-size), a GGUF type (q4_0, "
                            "q4_k, ...) or file (a GGUF file's own types); auto: file for a GGUF file, else "
                            "int8 on a CPU and the checkpoint's dtype on a GPU")
    model.add_argument("--group-size", type=int, default=None, metavar="N", help="int4 group size: 32, 64, 128 or 256 (default: 32)")
    model.add_argument("--kv-dtype", default="auto", metavar="DTYPE",
                       help="KV cache: auto (int8 beside quantized weights on a CPU, else the model's), model, "
                            "fp32, bf16, fp16, fp8, int8 (corral's: a float32 scale per token and head)")
    model.add_argument("--context", type=int, default=None, metavar="TOKENS",
                       help="context length for the concurrency figure (default: the model's, capped at 4096)")
    model.add_argument("--list-models", action="store_true", help="print the built-in models and exit")
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--hardware", default=None, metavar="NAME",
                    help="a row of the table (`--list-hardware`); default: local, this machine's CPU row")
    hw.add_argument("--list-hardware", action="store_true", help="print the hardware table and exit")
    hw.add_argument("--tp", type=int, default=None, metavar="N", help="tensor-parallel devices per replica (default: 1)")
    hw.add_argument("--pp", type=int, default=1, metavar="N", help="pipeline-parallel stages per replica")
    hw.add_argument("--replicas", type=int, default=None, metavar="N", help="replicas to plan (default: as many as --rps needs, else 1)")
    hw.add_argument("--price-per-hour", type=float, default=None, metavar="USD",
                    help="price of one device per hour (default: the table's indicative price)")
    traffic = parser.add_argument_group("traffic and SLOs")
    traffic.add_argument("--rps", type=float, default=None, metavar="X", help="requests per second to serve")
    traffic.add_argument("--prompt-len", default="256", metavar="N|LOW:HIGH", help="prompt tokens, fixed or uniform")
    traffic.add_argument("--output-len", default="128", metavar="N|LOW:HIGH", help="output tokens, fixed or uniform")
    traffic.add_argument("--slo-ttft-ms", type=float, default=2000.0, metavar="MS", help="time to first token")
    traffic.add_argument("--slo-tpot-ms", type=float, default=100.0, metavar="MS", help="time per output token")
    traffic.add_argument("--headroom", type=float, default=0.2, metavar="FRACTION",
                         help="share of each replica's SLO batch kept free for bursts")
    engine = parser.add_argument_group("engine and model assumptions")
    engine.add_argument("--block-size", type=int, default=None, metavar="TOKENS", help="KV block size in tokens (default: corral's, 4)")
    engine.add_argument("--kv-cache-memory", type=int, default=None, metavar="BYTES",
                        help="the KV pool's bytes, as the engine's kv_cache_memory (default: memory x "
                             "--memory-utilization - weights - activation peak - overhead, vLLM's rule)")
    engine.add_argument("--memory-utilization", type=float, default=None, metavar="FRACTION",
                        help="share of device memory the engine may use (default: 0.9, vLLM's)")
    engine.add_argument("--overhead-bytes", type=int, default=None, metavar="BYTES",
                        help="memory outside weights, activations and KV (default: 353 MiB on a CPU, 1.5 GiB on a GPU)")
    engine.add_argument("--max-num-seqs", type=int, default=None, metavar="N",
                        help="the scheduler's cap on running sequences (default: corral's 64 on a CPU, vLLM's 256 on a GPU)")
    engine.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                        help="tokens per step (default: corral's 512 on a CPU, vLLM's 8192 on a GPU)")
    engine.add_argument("--bandwidth-efficiency", type=float, default=None, metavar="FRACTION",
                        help="share of peak bandwidth reached (default: 0.6, sources in docs/planner.md)")
    engine.add_argument("--compute-efficiency", type=float, default=None, metavar="FRACTION",
                        help="share of peak matrix throughput reached (default: 0.6 on a CPU, 0.5 on a GPU)")
    engine.add_argument("--calibration", default=None, metavar="PATH|none",
                        help=f"the calibration file read for the local row (default: ${CALIBRATION_ENV}, else "
                             "~/.config/corral/calibration.json); none: the default factors")
    rec = parser.add_argument_group("recommendations")
    rec.add_argument("--recommend", action="store_true",
                     help="rank hardware x weight format x TP x KV dtype by cost among those meeting the SLOs "
                          "(--hardware, --format, --tp, --kv-dtype narrow the search)")
    rec.add_argument("--top", type=int, default=None, metavar="N", help="recommendations shown (default: 10)")
    cal = parser.add_argument_group("calibrate (corral plan calibrate)")
    cal.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                     help="read measurements: bench/run.py's bench.json or an observations file")
    cal.add_argument("--run", dest="run_engine", action="store_true",
                     help="measure corral's offline engine here (single-stream decode, 32 streams, TTFT at "
                          "128/512/2048 tokens; about two minutes)")
    cal.add_argument("--out", default=None, metavar="PATH", help="calibration file to write (default: as --calibration)")
    cal.add_argument("--save-measurements", default=None, metavar="FILE", help="also write the observations as JSON")
    cal.add_argument("--step-overhead-ms", type=float, default=None, metavar="MS",
                     help="a fixed time per engine step to fit around (default: 0; docs/planner.md)")
    cal.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads for --run (default: torch's)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    out.add_argument("--plot", default=None, metavar="FILE.png",
                     help="write throughput, TPOT and TTFT against batch size with the SLO lines (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from corral.errors import ConfigError
    from corral.planner.plan import build_plan
    from corral.planner.report import plan_to_dict, print_plan

    if args.action == "calibrate":
        return _calibrate(args)
    given = [f"--{name.replace('_', '-')}" for name in _CALIBRATE_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise ConfigError(f"{given[0].replace('--from-file', '--from').replace('--run-engine', '--run')} "
                          "applies to `corral plan calibrate` only")
    if args.list_models or args.list_hardware:
        _print_tables(args.list_models, args.list_hardware, Console())
        return 0
    request = _request(args)
    calibration = _read_calibration(args.calibration)
    if args.recommend:
        return _recommend(args, request, calibration)
    if args.top is not None:
        raise ConfigError("--top applies to --recommend only")
    plan = build_plan(request, calibration=calibration)
    if args.plot:
        from corral.planner.plot import write_plot

        write_plot(plan, args.plot)
    if args.json:
        print(json.dumps(plan_to_dict(plan), indent=2))
    else:
        print_plan(plan, Console())
        if args.plot:
            Console().print(f"plot written to {args.plot}")
    return 0


def _request(args: argparse.Namespace) -> PlanRequest:
    from corral.planner.plan import PlanRequest

    kwargs = {} if args.block_size is None else {"block_size": args.block_size}
    if args.memory_utilization is not None:
        kwargs["memory_utilization"] = args.memory_utilization
    request = PlanRequest(
        model=args.model, format=args.format, group_size=args.group_size, kv_dtype=args.kv_dtype,
        context_len=args.context, hardware=args.hardware, tensor_parallel_size=1 if args.tp is None else args.tp,
        pipeline_parallel_size=args.pp, replicas=args.replicas, requests_per_s=args.rps,
        prompt_len=args.prompt_len, output_len=args.output_len, slo_ttft_ms=args.slo_ttft_ms,
        slo_tpot_ms=args.slo_tpot_ms, headroom=args.headroom, kv_cache_memory=args.kv_cache_memory,
        overhead_bytes=args.overhead_bytes,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        bandwidth_efficiency=args.bandwidth_efficiency, compute_efficiency=args.compute_efficiency,
        price_per_hour=args.price_per_hour,
        **kwargs,
    )
    return request


def _read_calibration(given: str | None) -> tuple[StoredCalibration | None, str] | None:
    """This host's calibration entry and a line saying whether one applies; None with --calibration none."""
    from corral.planner.calibration_store import calibration_for, this_host

    if given is not None and given.lower() == "none":
        return None
    return calibration_for(given or default_calibration_path(), this_host())


def _recommend(args: argparse.Namespace, request: PlanRequest,
               calibration: tuple[StoredCalibration | None, str] | None) -> int:
    import json

    from rich.console import Console

    from corral.errors import ConfigError
    from corral.planner.recommend import recommend
    from corral.planner.recommend_report import print_recommendations, recommendations_to_dict

    if args.plot:
        raise ConfigError("--plot draws one plan: drop --recommend, or plan the chosen row with --hardware")
    top = 10 if args.top is None else args.top
    if top < 1:
        raise ConfigError("--top must be at least 1")
    recs = recommend(request, calibration, args.tp)
    if args.json:
        print(json.dumps(recommendations_to_dict(recs, request, top), indent=2))
    else:
        print_recommendations(recs, request, top, Console())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from corral.errors import ConfigError
    from corral.planner.calibration_job import (
        calibrate,
        observations_to_json,
        print_calibration,
        read_observations,
    )
    from corral.planner.calibration_store import this_host, write_calibration

    if (args.from_file is None) == (not args.run_engine):
        raise ConfigError("corral plan calibrate needs one of --from FILE or --run")
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    calibrate_flags = {"action", "model", "json", *_CALIBRATE_ONLY}
    for name, default in vars(defaults.parse_args([])).items():
        if name not in calibrate_flags and getattr(args, name) != default:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to `corral plan calibrate` (it measures corral's own defaults; "
                              "--out names the file it writes)")
    if args.threads is not None and not args.run_engine:
        raise ConfigError("--threads applies to --run only")
    console = Console(stderr=args.json)
    if args.run_engine:
        from datetime import UTC, datetime

        from corral.bench.calibrate import MeasureSettings, measure

        observations = measure(args.model, MeasureSettings(threads=args.threads), log=console.print)
        source = f"--run, {datetime.now(UTC).isoformat(timespec='minutes')}, threads {args.threads or 'default'}"
    else:
        observations, source = read_observations(args.from_file)
    overhead = 0.0 if args.step_overhead_ms is None else args.step_overhead_ms / 1000
    calibration = calibrate(observations, this_host(), source, args.model, overhead)
    if args.save_measurements:
        with open(args.save_measurements, "w") as f:
            json.dump({"date": calibration.date, "host": calibration.to_json()["host"],
                       "observations": observations_to_json(observations)}, f, indent=2)
    path = args.out or default_calibration_path()
    write_calibration(path, calibration)
    if args.json:
        print(json.dumps(calibration.to_json(), indent=2))
    else:
        print_calibration(calibration, console)
        console.print(f"wrote {path} for this host ({calibration.host.key})")
    return 0


def _print_tables(models: bool, hardware: bool, console: Console) -> None:
    from rich.table import Table

    from corral.planner.hardware import HARDWARE, local_cpu_name
    from corral.planner.models import BUILTIN_MODELS

    if models:
        table = Table("name", "parameters", "layers", "heads / KV heads", "context", "source", title="Built-in models")
        for m in BUILTIN_MODELS.values():
            table.add_row(m.name, f"{m.num_parameters() / 1e9:.2f} B", str(m.num_hidden_layers),
                          f"{m.num_attention_heads} / {m.num_key_value_heads}", str(m.max_position_embeddings), m.source)
        console.print(table)
    if hardware:
        table = Table("name", "memory GiB", "GB/s", "TFLOP/s (dense)", "$/h", "source", title="Hardware")
        for h in HARDWARE.values():
            flops = ", ".join(f"{k} {v / 1e12:g}" for k, v in h.peak_flops.items())
            name = h.name + (" (local)" if h.name == local_cpu_name() else "")
            table.add_row(name, f"{h.memory_bytes / 2**30:g}", f"{h.bandwidth_bytes_per_s / 1e9:,.0f}", flops,
                          f"{h.price_per_hour:g}", f"{h.spec_source}; price {h.price_source}")
        console.print(table)
