"""``corral plan calibrate`` without the measuring: read observations (corral's own benchmark file or a
calibration run's), fit the factors on this host's row, and tabulate predicted against measured, with and
without the calibration."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from corral.errors import ConfigError
from corral.planner.calibration import (
    Factors,
    FitResult,
    Observation,
    fit,
    predict,
    relative_error,
    with_factors,
)
from corral.planner.calibration_store import HostIdentity, StoredCalibration
from corral.planner.models import ModelShape
from corral.planner.plan import Plan, PlanRequest, build_plan


def observations_to_json(observations: list[Observation]) -> list[dict[str, Any]]:
    return [asdict(o) for o in observations]


def read_observations(path: str) -> tuple[list[Observation], str]:
    """Observations in ``path`` and what they are: a file with an ``observations`` list (written by
    ``corral plan calibrate --run --save-measurements`` or bench/planner_validation.py), or corral's
    benchmark file (bench/run.py's bench.json: its offline single-stream, TTFT and workload A figures)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--from {path}: cannot read it ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("observations"), list):
        try:
            return [Observation(**o) for o in data["observations"]], f"{path} ({data.get('date', 'undated')})"
        except TypeError as exc:
            raise ConfigError(f"--from {path}: an observation is malformed ({exc})") from None
    try:
        corral = data["offline"]["corral"]
        return _bench_observations(corral, data["meta"]["args"]), f"{path} (bench/run.py, {data['date'][:10]})"
    except (KeyError, TypeError, IndexError):
        raise ConfigError(f"--from {path}: neither an observations file nor bench/run.py's results") from None


def _bench_observations(corral: dict[str, Any], args: dict[str, Any]) -> list[Observation]:
    out = []
    for runs in corral["single"].values():  # each: TTFT and decode after one prompt, medians of the repeats
        prompt = runs[0]["prompt_tokens"]
        out.append(Observation("decode_tok_s", statistics.median(r["decode_tok_s"] for r in runs), prompt,
                               runs[0]["output_tokens"]))
        out.append(Observation("ttft_s", statistics.median(r["ttft_s"] for r in runs), prompt))
    for runs in corral.get("ttft", {}).values():
        out.append(Observation("ttft_s", statistics.median(r["ttft_s"] for r in runs), runs[0]["prompt_tokens"]))
    num_prompts = int(args["num_prompts"])
    for runs in corral["workloads"].get("A", [])[:1]:
        out.append(Observation("batch_output_tok_s", runs["tok_s"], runs["prompt_tokens"] / num_prompts,
                               int(args["max_tokens"]), num_prompts))
    # the longest single-stream prompt's decode first: split_observations fits on the first decode
    return sorted(out, key=lambda o: (o.kind != "decode_tok_s", -o.prompt_tokens if o.kind == "decode_tok_s" else 0))


def default_plan(model: str | None, model_shape: ModelShape | None = None, row: str | None = None) -> Plan:
    """The uncalibrated plan of ``model`` on the CPU row ``row`` (default: this host's), in corral serve's
    formats."""
    return build_plan(PlanRequest(model=model, hardware=row), model_shape=model_shape)


def validation_rows(observations: list[Observation], plan: Plan, result: FitResult) -> list[dict[str, Any]]:
    """Measured, predicted (default and calibrated factors) and the relative error of each, per observation."""
    assert plan.steps is not None
    calibrated = with_factors(plan.steps, result.factors)
    rows = []
    for o in observations:
        default = predict(o, plan.steps, plan.max_num_batched_tokens)
        fitted = predict(o, calibrated, plan.max_num_batched_tokens)
        rows.append({
            "label": o.label, "role": "fit" if o in result.fit_on else "validation", "observation": asdict(o),
            "measured": o.display(o.value), "predicted_default": o.display(default),
            "predicted_calibrated": o.display(fitted), "error_default": relative_error(default, o.value),
            "error_calibrated": relative_error(fitted, o.value),
        })
    return rows


def calibrate(observations: list[Observation], host: HostIdentity, source: str, model: str | None = None,
              step_overhead_s: float = 0.0, model_shape: ModelShape | None = None) -> StoredCalibration:
    """Fit this host's factors on ``observations`` of ``model`` (default: the default model)."""
    plan = default_plan(model, model_shape, host.row)
    if plan.hardware.name != host.row:
        raise ConfigError(f"the host is {host.row} but the plan used {plan.hardware.name}")
    assert plan.steps is not None
    result = fit(observations, plan.steps, plan.max_num_batched_tokens, step_overhead_s)
    rows = validation_rows(observations, plan, result)
    notes = list(result.notes)
    if plan.steps.efficiency.step_overhead_s:
        notes.append("the default factors' step overhead is not zero")
    return StoredCalibration(host, result.factors, plan.compute_dtype, datetime.now(UTC).isoformat(timespec="seconds"),
                             source, plan.model.name, rows, notes)


def describe(factors: Factors) -> str:
    return (f"bandwidth efficiency {factors.bandwidth:.3f}, compute efficiency {factors.compute:.3f}, "
            f"step overhead {factors.step_overhead_s * 1000:.2f} ms")


def print_calibration(calibration: StoredCalibration, console: Any) -> None:
    """The fitted factors and predicted against measured, uncalibrated and calibrated (a rich Console)."""
    from rich.table import Table

    table = Table(title=f"Calibration of {calibration.host.row} ({calibration.host.cpu_model}) on "
                        f"{calibration.model}, from {calibration.source}", title_justify="left")
    for name in ("role", "measurement", "measured", "default factors", "error", "calibrated", "error"):
        table.add_column(name, justify="left" if name in ("role", "measurement") else "right")
    for r in calibration.validation:
        table.add_row(r["role"], r["label"], f"{r['measured']:,.1f}", f"{r['predicted_default']:,.1f}",
                      f"{r['error_default']:+.0%}", f"{r['predicted_calibrated']:,.1f}", f"{r['error_calibrated']:+.0%}")
    console.print(table)
    console.print(f"fitted: {describe(calibration.factors)} (for {calibration.compute_dtype} products)")
    for note in calibration.notes:
        console.print(f"[yellow]note:[/] {note}")
