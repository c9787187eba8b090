"""A plan as JSON-ready data, and as rich tables on a terminal."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.planner.batching import BatchPoint
from corral.planner.plan import Plan

MiB = 2**20


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    m, hw, w = plan.memory, plan.hardware, plan.memory.weight
    return {
        "model": {"name": plan.model.name, "source": plan.model.source, "parameters": plan.model.num_parameters(),
                  "layers": plan.model.num_hidden_layers, "kv_heads": plan.model.num_key_value_heads,
                  "head_size": plan.model.head_size, "experts": plan.model.num_local_experts},
        "weight_format": {"name": plan.weight_format.name, "description": plan.weight_format.description,
                          "compute_dtype": plan.compute_dtype, "activation_bytes": plan.activation_bytes},
        "hardware": {"name": hw.name, "kind": hw.kind, "memory_bytes": hw.memory_bytes,
                     "bandwidth_bytes_per_s": hw.bandwidth_bytes_per_s, "peak_flops": hw.peak_flops,
                     "price_per_hour": hw.price_per_hour, "spec_source": hw.spec_source,
                     "price_source": hw.price_source},
        "parallel": {"tensor_parallel_size": plan.parallel.tensor_parallel_size,
                     "pipeline_parallel_size": plan.parallel.pipeline_parallel_size},
        "memory": {"weight_bytes": w.total, "weight_bytes_per_device": w.per_device, "weight_bytes_by_role": w.by_role,
                   "kv_dtype": m.kv_dtype, "kv_bytes_per_token": m.kv_bytes_per_token, "block_size": m.block_size,
                   "block_bytes": m.block_bytes, "usable_bytes": m.usable_bytes,
                   "activation_peak_bytes": m.activation_peak_bytes, "overhead_bytes": m.overhead_bytes,
                   "kv_budget_bytes": m.kv_budget_bytes, "num_blocks": m.num_blocks, "num_kv_tokens": m.num_kv_tokens,
                   "context_len": m.context_len, "max_seqs_at_context": m.max_seqs_at_context,
                   "vllm_max_concurrency": m.vllm_max_concurrency},
        "efficiency": asdict(plan.efficiency),
        "calibration": plan.calibration,
        "traffic": {"requests_per_s": plan.traffic.requests_per_s, "prompt_len": str(plan.traffic.prompt),
                    "output_len": str(plan.traffic.output), "slo_ttft_s": plan.traffic.slo_ttft_s,
                    "slo_tpot_s": plan.traffic.slo_tpot_s, "headroom": plan.traffic.headroom},
        "scheduler": {"max_num_seqs": plan.max_num_seqs, "max_num_batched_tokens": plan.max_num_batched_tokens,
                      "max_batch": plan.max_batch},
        "prefill_tokens_per_s": plan.prefill_tokens_per_s,
        "decode_tokens_per_s_single": plan.decode_tokens_per_s_single,
        "batches": [_point(p) for p in plan.points],
        "slo_batch": None if plan.best is None else _point(plan.best),
        "replicas": None if plan.traffic_plan is None else asdict(plan.traffic_plan),
        "capacity_requests_per_s": plan.capacity_requests_per_s,
        "cost": None if plan.cost is None else asdict(plan.cost),
        "notes": plan.notes,
    }


def _point(point: BatchPoint) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(point).items()}


def print_plan(plan: Plan, console: Console) -> None:
    console.print(_summary(plan))
    console.print(_memory(plan))
    if plan.points:
        console.print(_batches(plan))
    console.print(_outcome(plan))
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    eff = plan.efficiency
    console.print(f"[dim]bandwidth efficiency {eff.bandwidth:.3g}: {eff.bandwidth_source}[/]")
    console.print(f"[dim]compute efficiency {eff.compute:.3g}: {eff.compute_source}[/]")
    if eff.step_overhead_s:
        console.print(f"[dim]step overhead {eff.step_overhead_s * 1000:g} ms: {eff.overhead_source}[/]")
    if eff.kernels_per_layer or eff.allreduce_latency_s:
        console.print(f"[dim]fixed latencies: {eff.kernels_per_layer} kernels a layer x {eff.kernel_latency_s * 1e6:g} us, "
                      f"{eff.allreduce_latency_s * 1e6:g} us an all-reduce call: {eff.latency_source}[/]")
    if plan.calibration:
        console.print(f"[dim]calibration: {plan.calibration}[/]")
    console.print(f"[dim]{plan.hardware.name}: {plan.hardware.spec_source}; price {plan.hardware.price_source}[/]")


def _table(title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    return table


def _summary(plan: Plan) -> Table:
    m, hw = plan.model, plan.hardware
    table = _table("Plan")
    table.add_row("model", f"{m.name}: {m.num_parameters() / 1e6:,.1f} M parameters, {m.num_hidden_layers} layers, "
                           f"{m.num_attention_heads} heads / {m.num_key_value_heads} KV heads of {m.head_size}")
    table.add_row("weights", f"{plan.weight_format.name} ({plan.weight_format.description}); products in {plan.compute_dtype}")
    devices = plan.parallel.num_devices
    table.add_row("hardware", f"{hw.name} ({hw.description}) x {devices}: {hw.memory_bytes / 2**30:g} GiB, "
                              f"{hw.bandwidth_bytes_per_s / 1e9:,.0f} GB/s, ${hw.price_per_hour:g}/h indicative")
    t = plan.traffic
    rate = "no rate given" if t.requests_per_s is None else f"{t.requests_per_s:g} req/s"
    table.add_row("traffic", f"{rate}; prompts {t.prompt}, outputs {t.output} tokens; SLO TTFT "
                             f"{t.slo_ttft_s * 1000:g} ms, TPOT {t.slo_tpot_s * 1000:g} ms")
    return table


def _memory(plan: Plan) -> Table:
    m = plan.memory
    table = _table("Memory (per device)")
    table.add_row("weights", f"{m.weight.per_device / MiB:,.1f} MiB ({m.weight.total:,} bytes in all)")
    table.add_row("KV per token", f"{m.kv_bytes_per_token:,} bytes ({m.kv_dtype}); a block of {m.block_size}: "
                                  f"{m.block_bytes:,} bytes")
    table.add_row("usable", f"{m.usable_bytes / MiB:,.0f} MiB; activation peak {m.activation_peak_bytes / MiB:,.0f} MiB, "
                            f"overhead {m.overhead_bytes / MiB:,.0f} MiB")
    table.add_row("KV pool", f"{m.kv_budget_bytes / MiB:,.0f} MiB = {m.num_blocks:,} blocks = {m.num_kv_tokens:,} tokens")
    table.add_row(f"at context {m.context_len}", f"{m.max_seqs_at_context:,} sequences at once "
                                                 f"(vLLM's max concurrency {m.vllm_max_concurrency:,.2f}x)")
    return table


def _batches(plan: Plan) -> Table:
    table = Table(title="Per batch (steady state, one replica)", title_justify="left")
    for name in ("batch", "TTFT ms", "TPOT ms", "output tok/s", "input tok/s", "bound", "within SLOs"):
        table.add_column(name, justify="right")
    t = plan.traffic
    for p in plan.points:
        ok = p.ttft_s <= t.slo_ttft_s and p.tpot_s <= t.slo_tpot_s
        table.add_row(str(p.batch), _ms(p.ttft_s), _ms(p.tpot_s), f"{p.output_tokens_per_s:,.0f}",
                      f"{p.input_tokens_per_s:,.0f}", p.bound, "yes" if ok else "[red]no[/]")
    return table


def _outcome(plan: Plan) -> Table:
    table = _table("Outcome")
    table.add_row("one sequence", f"prefill {plan.prefill_tokens_per_s:,.0f} tok/s, decode "
                                  f"{plan.decode_tokens_per_s_single:,.0f} tok/s")
    best = plan.best
    if best is None:
        table.add_row("SLO batch", "[red]none: even one sequence misses the SLOs[/]" if plan.max_batch else
                      "[red]none: no sequence of the longest lengths fits in memory[/]")
        return table
    table.add_row("SLO batch", f"{best.batch} sequences (of at most {plan.max_batch}): TTFT {_ms(best.ttft_s)} ms, "
                               f"TPOT {_ms(best.tpot_s)} ms, {best.output_tokens_per_s:,.0f} output tok/s")
    if plan.traffic_plan is not None:
        r = plan.traffic_plan
        table.add_row("replicas", f"{r.replicas_needed} needed ({r.requests_in_flight:,.1f} requests in flight, "
                                  f"headroom {plan.traffic.headroom:g}); planned {r.replicas} x "
                                  f"{plan.parallel.num_devices} device(s), at {r.utilization:.0%} of their SLO batch")
    if plan.capacity_requests_per_s is not None:
        table.add_row("capacity", f"{plan.capacity_requests_per_s:,.2f} req/s within the SLOs")
    if plan.cost is not None:
        c = plan.cost
        per_input = "-" if c.per_million_input is None else f"${c.per_million_input:,.4f}"
        table.add_row("cost", f"{per_input} per million input tokens, ${c.per_million_output:,.4f} per million output "
                              f"tokens (replica ${c.replica_per_hour:g}/h, full SLO batch)")
        if c.fleet_per_hour is not None:
            table.add_row("fleet", f"${c.fleet_per_hour:,.2f}/h")
    return table


def _ms(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:,.1f}"
