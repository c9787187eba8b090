"""Recommendations as JSON-ready data, and as a rich table with the rejections counted by reason."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from corral.planner.plan import PlanRequest
from corral.planner.recommend import Recommendation, Recommendations

REASONS = {
    "memory": "do not fit in memory",
    "tpot_slo": "miss the TPOT SLO even with one sequence",
    "ttft_slo": "miss the TTFT SLO even with one sequence",
    "unsupported": "are not possible (dtype missing on the hardware, TP not dividing the heads, a CPU with TP)",
}
BINDING = {"memory": "memory", "max_num_seqs": "max-num-seqs", "tpot_slo": "TPOT SLO", "ttft_slo": "TTFT SLO"}


def _row(r: Recommendation) -> dict[str, Any]:
    p, best, cost = r.plan, r.plan.best, r.plan.cost
    assert best is not None and cost is not None
    return {
        "hardware": r.candidate.hardware, "format": r.candidate.format,
        "tensor_parallel_size": r.candidate.tensor_parallel_size, "kv_dtype": r.candidate.kv_dtype,
        "devices_per_replica": p.parallel.num_devices,
        "replicas": None if p.traffic_plan is None else p.traffic_plan.replicas,
        "slo_batch": best.batch, "ttft_s": best.ttft_s, "tpot_s": best.tpot_s,
        "output_tokens_per_s": best.output_tokens_per_s,
        "cost_per_million_output_all_in": r.cost_per_million_output_all_in,
        "full_load_cost_per_million_output": r.full_load_cost_per_million_output,
        "cost_per_million_input": cost.per_million_input, "cost_per_million_output": cost.per_million_output,
        "fleet_per_hour": cost.fleet_per_hour, "binding": r.binding, "roofline": r.roofline,
        "explanation": r.explanation, "calibration": p.calibration,
    }


def recommendations_to_dict(recs: Recommendations, request: PlanRequest, top: int) -> dict[str, Any]:
    return {
        "model": request.model, "requests_per_s": request.requests_per_s, "prompt_len": request.prompt_len,
        "output_len": request.output_len, "slo_ttft_s": request.slo_ttft_ms / 1000,
        "slo_tpot_s": request.slo_tpot_ms / 1000,
        "ranked_by": ("fleet $/h over the traffic's output tokens" if request.requests_per_s is not None
                      else "one replica at its SLO batch") + ", prompts included ($ per million output tokens)",
        "num_accepted": len(recs.accepted),
        "recommendations": [_row(r) for r in recs.accepted[:top]],
        "rejected": {"counts": recs.rejection_counts,
                     "examples": {reason: [{"candidate": str(r.candidate), "detail": r.detail}
                                           for r in recs.rejected if r.reason == reason][:3]
                                  for reason in recs.rejection_counts}},
    }


def print_recommendations(recs: Recommendations, request: PlanRequest, top: int, console: Console) -> None:
    rate = "no rate (one replica at full load)" if request.requests_per_s is None else f"{request.requests_per_s:g} req/s"
    title = (f"Choices that meet TTFT {request.slo_ttft_ms:g} ms and TPOT {request.slo_tpot_ms:g} ms for {rate}, "
             f"prompts {request.prompt_len}, outputs {request.output_len}: the {min(top, len(recs.accepted))} "
             f"cheapest of {len(recs.accepted)}")
    table = Table(title=title, title_justify="left")
    for name in ("#", "choice", "replicas", "batch", "TTFT ms", "TPOT ms", "$/M out all-in", "$/M in", "$/M out",
                 "binding"):
        table.add_column(name, justify="left" if name in ("choice", "binding") else "right")
    for i, r in enumerate(recs.accepted[:top], 1):
        row = _row(r)
        replicas = "-" if row["replicas"] is None else str(row["replicas"])
        per_input = "-" if row["cost_per_million_input"] is None else f"{row['cost_per_million_input']:,.4f}"
        table.add_row(str(i), str(r.candidate), replicas, str(row["slo_batch"]), f"{row['ttft_s'] * 1000:,.1f}",
                      f"{row['tpot_s'] * 1000:,.1f}", f"{row['cost_per_million_output_all_in']:,.4f}", per_input,
                      f"{row['cost_per_million_output']:,.4f}", f"{BINDING[r.binding]}, {r.roofline}")
    console.print(table)
    for i, r in enumerate(recs.accepted[:top], 1):
        console.print(f"{i}. {r.explanation}")
    if not recs.accepted:
        console.print("[red]no choice meets the SLOs[/]")
    for reason, count in recs.rejection_counts.items():
        example = next(r for r in recs.rejected if r.reason == reason)
        console.print(f"rejected: {count} {REASONS[reason]}; e.g. {example.candidate}: {example.detail}")
    calibrations = {r.plan.calibration for r in recs.accepted if r.plan.calibration}
    for line in sorted(calibrations):
        console.print(f"[dim]local row: {line}[/]")
    console.print("[dim]$/M out all-in: " + recommendations_to_dict(recs, request, 0)["ranked_by"] + "; $/M in and "
                  "$/M out split one replica's cost at its SLO batch between prompt and output tokens[/]")
