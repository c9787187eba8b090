"""Per-batch TTFT and TPOT, and the SLO batch: the binary search equals a scan, the budget caps TTFT."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.planner.batching import (
    batch_point,
    largest_batch_meeting_slos,
    prompt_chunk,
    sweep_batches,
    time_to_first_token,
)
from corral.planner.models import BUILTIN_MODELS
from corral.planner.roofline import DEFAULT_EFFICIENCY, StepModel, StepWork, combine, decode_work
from corral.planner.traffic import LengthDistribution, TrafficProfile

SMOL = BUILTIN_MODELS["smollm2-135m"]
STEPS = StepModel(SMOL, 96_576_768, 0, 12_240, 21e9, 299e9, DEFAULT_EFFICIENCY["cpu"])


def traffic(prompt: int = 256, output: int = 128, ttft: float = 2.0, tpot: float = 0.1) -> TrafficProfile:
    return TrafficProfile(None, LengthDistribution(prompt, prompt), LengthDistribution(output, output), ttft, tpot)


def test_one_sequence_decodes_at_the_weights_over_bandwidth():
    point = batch_point(STEPS, traffic(prompt=0, output=1), 1, 512)
    # no prompt: one token a step, reading every weight once, its mean context's K/V (half a token for an
    # output of 1) and writing its own
    expected = (96_576_768 + 1.5 * 12_240) / (21e9 * 0.6)
    assert math.isclose(point.tpot_s, expected)
    assert math.isclose(point.output_tokens_per_s, 1 / expected)
    assert point.input_tokens_per_s == 0 and point.bound == "memory"


def test_steady_state_steps_carry_the_prompts_share():
    point = batch_point(STEPS, traffic(prompt=256, output=128), 8, 512)
    assert math.isclose(point.input_tokens_per_s / point.output_tokens_per_s, 256 / 128)
    assert point.step_s > point.decode_only_step_s == STEPS.seconds(decode_work(8, 256 + 64))
    assert math.isclose(point.request_latency_s, point.ttft_s + 127 * point.tpot_s)


def test_steps_with_a_prompt_chunk_come_as_often_as_prompts_arrive():
    # 4 sequences of 100 + 100 tokens: one prompt starts every 25 steps and fits the room (508 of 512) whole,
    # so 1 step in 25 carries it and the others only decode (a memory-bound step here); smearing the prompt
    # over every step would hide that the chunk's step is compute-bound
    point = batch_point(STEPS, traffic(prompt=100, output=100), 4, 512)
    decode = decode_work(4, 150)
    with_prompt = combine(decode, StepWork(100, 1, 100 * 101 / 2, 0))
    assert STEPS.seconds(decode) == STEPS.memory_seconds(decode)
    assert STEPS.seconds(with_prompt) == STEPS.compute_seconds(with_prompt)
    assert math.isclose(point.tpot_s, 0.96 * STEPS.seconds(decode) + 0.04 * STEPS.seconds(with_prompt))
    smeared = STEPS.seconds(combine(decode, StepWork(4, 0.04, 4 * 101 / 2, 0)))
    assert point.tpot_s > 1.1 * smeared


def test_a_chunk_reads_what_earlier_chunks_cached_once():
    assert prompt_chunk(500, 1) == StepWork(500, 1, 500 * 501 / 2, 0)
    # the second of two chunks reads the first's 250 tokens once: 125 a chunk on average, not 250 a token
    assert prompt_chunk(500, 2) == StepWork(250, 0.5, 250 * 501 / 2, 125)


def test_ttft_chunks_the_prompt_in_what_the_decodes_leave():
    # 20 sequences leave 493 of 512 tokens: the prompt takes 2 steps of 250, each beside 19 decodes
    chunk = StepWork(250, 0.5, 500 * 501 / 2 / 2, 125)
    expected = 2 * STEPS.seconds(combine(decode_work(19, 600), chunk))
    assert math.isclose(time_to_first_token(STEPS, 500, 20, 600, 512), expected)
    weight_bound = replace(STEPS, weight_bytes_per_device=10**12)  # every step costs the same weight read
    one_step = time_to_first_token(weight_bound, 500, 1, 600, 512)
    assert time_to_first_token(weight_bound, 500, 20, 600, 512) > 1.99 * one_step
    assert time_to_first_token(STEPS, 500, 513, 600, 512) == math.inf  # decodes take the whole budget


@settings(max_examples=15, deadline=None)
@given(prompt=st.integers(1, 4000), output=st.integers(1, 1000), ttft=st.floats(0.01, 20), tpot=st.floats(0.005, 0.5),
       max_batch=st.integers(0, 150), budget=st.sampled_from([64, 512, 8192]))
def test_the_slo_batch_is_the_largest_in_a_scan(prompt, output, ttft, tpot, max_batch, budget):
    t = traffic(prompt, output, ttft, tpot)
    best = largest_batch_meeting_slos(STEPS, t, max_batch, budget)
    within = [b for b in range(1, max_batch + 1)
              if (p := batch_point(STEPS, t, b, budget)).ttft_s <= ttft and p.tpot_s <= tpot]
    assert (best.batch if best else None) == (max(within) if within else None)


def test_sweep_batches():
    assert sweep_batches(64) == [1, 2, 4, 8, 16, 32, 64]
    assert sweep_batches(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert sweep_batches(1) == [1]
