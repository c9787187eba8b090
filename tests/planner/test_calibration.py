"""Calibration: the fit recovers known factors from synthetic measurements, keeps validation points out of
the fit, and reads corral's own benchmark file."""

from __future__ import annotations

import math
import os

import pytest

from corral.errors import ConfigError
from corral.planner.calibration import Factors, Observation, fit, predict, with_factors
from corral.planner.calibration_job import calibrate, read_observations
from corral.planner.calibration_store import this_host
from corral.planner.plan import PlanRequest, build_plan
from corral.planner.roofline import StepWork

BENCH_JSON = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results", "bench.json")


@pytest.fixture(scope="module")
def default_plan():
    return build_plan(PlanRequest())


def synthetic(steps, tokens_budget: int, factors: Factors) -> list[Observation]:
    """What a host with ``factors`` would measure, through the planner's own predictions."""
    truth = with_factors(steps, factors)
    shapes = [Observation("decode_tok_s", 1.0, 128, 128), Observation("batch_output_tok_s", 1.0, 64, 128, 32),
              Observation("ttft_s", 1.0, 128), Observation("ttft_s", 1.0, 512), Observation("ttft_s", 1.0, 2048)]
    return [Observation(o.kind, predict(o, truth, tokens_budget), o.prompt_tokens, o.output_tokens, o.num_seqs)
            for o in shapes]


@pytest.mark.parametrize("factors", [Factors(0.45, 0.35), Factors(0.8, 0.9, 0.002), Factors(1.6, 1.2)])
def test_the_fit_recovers_known_factors_and_predicts_the_held_out_points(default_plan, factors):
    steps, budget = default_plan.steps, default_plan.max_num_batched_tokens
    observations = synthetic(steps, budget, factors)
    result = fit(observations, steps, budget, factors.step_overhead_s)
    assert math.isclose(result.factors.bandwidth, factors.bandwidth, rel_tol=1e-9)
    assert math.isclose(result.factors.compute, factors.compute, rel_tol=1e-9)
    # fitted on the decode and the 512-token TTFT only; the other three are validation points
    assert [(o.kind, o.prompt_tokens) for o in result.fit_on] == [("decode_tok_s", 128), ("ttft_s", 512)]
    assert len(result.validate_on) == 3
    fitted = with_factors(steps, result.factors)
    for o in result.validate_on:
        assert math.isclose(predict(o, fitted, budget), o.value, rel_tol=1e-9)


@pytest.mark.parametrize("factors", [Factors(0.45, 0.35), Factors(0.9, 0.7)])
def test_the_fit_counts_the_all_reduces_of_a_tensor_parallel_plan(factors):
    plan = build_plan(PlanRequest(model="llama-3.1-70b", hardware="h100", format="fp8", kv_dtype="fp8",
                                  tensor_parallel_size=2))
    steps, budget = plan.steps, plan.max_num_batched_tokens
    prefill = StepWork(512, 1, 0, 0)
    assert steps.link_seconds(prefill) > 0.01 * steps.seconds(prefill)  # the all-reduces count here
    assert steps.latency_seconds() > 0  # and the GPU's kernel and all-reduce latencies, which the fit subtracts
    result = fit(synthetic(steps, budget, factors), steps, budget)
    assert math.isclose(result.factors.bandwidth, factors.bandwidth, rel_tol=1e-9)
    assert math.isclose(result.factors.compute, factors.compute, rel_tol=1e-9)


def test_factors_above_one_raise_the_rows_peaks_not_the_efficiency(default_plan):
    steps = with_factors(default_plan.steps, Factors(1.5, 0.5, 0.001))
    assert steps.efficiency.bandwidth == 1.0 and steps.efficiency.compute == 0.5
    assert steps.bandwidth_bytes_per_s == default_plan.steps.bandwidth_bytes_per_s * 1.5
    assert steps.efficiency.step_overhead_s == 0.001


def test_a_given_factor_keeps_the_gpu_latencies():
    plan = build_plan(PlanRequest(model="llama-3.1-8b", hardware="h100", bandwidth_efficiency=0.7))
    assert plan.efficiency.bandwidth == 0.7 and plan.efficiency.kernels_per_layer > 0
    assert with_factors(plan.steps, Factors(0.5, 0.5)).latency_seconds() == plan.steps.latency_seconds()


def test_an_overhead_larger_than_a_measured_step_is_refused(default_plan):
    observations = synthetic(default_plan.steps, 512, Factors(0.5, 0.5))
    with pytest.raises(ConfigError, match="exceeds a measured step"):
        fit(observations, default_plan.steps, 512, step_overhead_s=1.0)


def test_the_fit_needs_a_decode_and_a_one_step_prefill(default_plan):
    with pytest.raises(ConfigError, match="needs a single-stream decode"):
        fit([Observation("ttft_s", 1.0, 2048)], default_plan.steps, 512)
    with pytest.raises(ConfigError, match="unknown observation kind"):
        Observation("throughput", 1.0, 10)


def test_corrals_benchmark_file_reads_as_observations():
    observations, source = read_observations(BENCH_JSON)
    kinds = {(o.kind, o.prompt_tokens) for o in observations}
    assert {("ttft_s", 512), ("ttft_s", 2048), ("decode_tok_s", 196)} <= kinds and "bench/run.py" in source
    batch = next(o for o in observations if o.kind == "batch_output_tok_s")
    assert batch.num_seqs == 32 and batch.output_tokens == 128
    cal = calibrate(observations, this_host(), source)
    rows = {r["label"]: r for r in cal.validation}
    fit_rows = [r for r in rows.values() if r["role"] == "fit"]
    assert len(fit_rows) == 2 and all(abs(r["error_calibrated"]) < 1e-9 for r in fit_rows)
    assert all("error_default" in r for r in rows.values())


def test_a_file_that_is_neither_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="neither an observations file"):
        read_observations(str(path))
