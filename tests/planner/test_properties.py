"""Monotone predictions: more bandwidth is never slower, more compute never slower, more memory never fewer
sequences, whatever the model, format and hardware row."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, reject, settings
from hypothesis import strategies as st

from corral.errors import ConfigError
from corral.planner.hardware import HARDWARE
from corral.planner.plan import PlanRequest, build_plan

MODELS = ["smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b", "qwen3-8b", "mixtral-8x7b", "llama-3.1-70b"]
FORMATS = ["bf16", "fp8", "int8", "int4", "q4_k", "q4_1"]
plans = st.fixed_dictionaries({
    "model": st.sampled_from(MODELS),
    "format": st.sampled_from(FORMATS),
    "hardware": st.sampled_from(["h100-sxm", "h200", "l40s", "l4", "mi300x"]),
    "prompt_len": st.integers(1, 4000).map(str),
    "output_len": st.integers(1, 1000).map(str),
    "slo_tpot_ms": st.floats(5, 200),
})
factor = st.floats(1.0, 8.0)


def build(request: PlanRequest, **row_changes):
    row = HARDWARE[request.hardware]
    try:
        return build_plan(request, replace(row, **row_changes) if row_changes else row)
    except ConfigError:
        reject()  # a refused combination (q4_k rows of 576 weights, fp8 on an A10G, a context past the model's)


@settings(max_examples=40, deadline=None)
@given(values=plans, more=factor)
def test_more_bandwidth_is_never_slower(values, more):
    request = PlanRequest(**values)
    row = HARDWARE[request.hardware]
    slow, fast = build(request), build(request, bandwidth_bytes_per_s=row.bandwidth_bytes_per_s * more)
    for a, b in zip(slow.points, fast.points, strict=True):
        assert b.tpot_s <= a.tpot_s and b.ttft_s <= a.ttft_s and b.output_tokens_per_s >= a.output_tokens_per_s
    assert fast.decode_tokens_per_s_single >= slow.decode_tokens_per_s_single
    assert (fast.best.batch if fast.best else 0) >= (slow.best.batch if slow.best else 0)


@settings(max_examples=40, deadline=None)
@given(values=plans, more=factor)
def test_more_compute_is_never_slower(values, more):
    request = PlanRequest(**values)
    row = HARDWARE[request.hardware]
    slow = build(request)
    fast = build(request, peak_flops={k: v * more for k, v in row.peak_flops.items()})
    for a, b in zip(slow.points, fast.points, strict=True):
        assert b.tpot_s <= a.tpot_s and b.ttft_s <= a.ttft_s
    assert fast.prefill_tokens_per_s >= slow.prefill_tokens_per_s


@settings(max_examples=40, deadline=None)
@given(values=plans, more=factor, context=st.integers(2, 8192))
def test_more_memory_never_fits_fewer_sequences(values, more, context):
    request = PlanRequest(**values, context_len=context)
    row = HARDWARE[request.hardware]
    small, big = build(request), build(request, memory_bytes=int(row.memory_bytes * more))
    assert big.memory.num_blocks >= small.memory.num_blocks
    assert big.memory.max_seqs_at_context >= small.memory.max_seqs_at_context
    assert big.max_batch >= small.max_batch
    assert (big.best.batch if big.best else 0) >= (small.best.batch if small.best else 0)


@settings(max_examples=30, deadline=None)
@given(budget=st.integers(1 << 20, 1 << 34), more=st.integers(0, 1 << 30), context=st.integers(2, 8192))
def test_a_bigger_kv_budget_never_fits_fewer_sequences(budget, more, context):
    small = build_plan(PlanRequest(kv_cache_memory=budget, context_len=context))
    big = build_plan(PlanRequest(kv_cache_memory=budget + more, context_len=context))
    assert big.memory.max_seqs_at_context >= small.memory.max_seqs_at_context
