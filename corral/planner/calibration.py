"""Calibration: fit the roofline's efficiency factors (and a fixed per-step overhead) to measurements of
corral's engine on this host, and predict those measurements from any factors.

Honest by construction: the factors are fitted on some observations (single-stream decode for bandwidth,
the TTFT of one prompt that fits in one step for compute and the step overhead's share) and every other
observation is only predicted, never fitted, so its error is a validation. The uncalibrated error (the
defaults of roofline.DEFAULT_EFFICIENCY) is reported beside the calibrated one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from corral.errors import ConfigError
from corral.planner.batching import batch_point, prompt_chunk, time_to_first_token
from corral.planner.roofline import StepModel, StepWork, decode_work
from corral.planner.traffic import LengthDistribution, TrafficProfile

OBSERVATION_KINDS = ("decode_tok_s", "batch_output_tok_s", "ttft_s", "tpot_s")
# The prefill fit point: the TTFT whose prompt is nearest this (one step under corral's 512-token budget).
PREFILL_FIT_TOKENS = 512


@dataclass(frozen=True)
class Observation:
    """One measured figure: ``decode_tok_s`` (one stream decoding ``output_tokens`` after ``prompt_tokens``),
    ``batch_output_tok_s`` (``num_seqs`` streams of ``prompt_tokens`` + ``output_tokens``, output tokens over
    the whole run), ``ttft_s`` (one prompt of ``prompt_tokens``, seconds to its first token) or ``tpot_s``
    (seconds per output token with ``num_seqs`` such streams running, as a serving benchmark's ITL)."""

    kind: str
    value: float
    prompt_tokens: float
    output_tokens: float = 1
    num_seqs: int = 1

    def __post_init__(self) -> None:
        if self.kind not in OBSERVATION_KINDS:
            raise ConfigError(f"unknown observation kind {self.kind!r} (known: {', '.join(OBSERVATION_KINDS)})")
        if not self.value > 0 or self.prompt_tokens < 1 or self.output_tokens < 1 or self.num_seqs < 1:
            raise ConfigError(f"observation {self.kind}: value, tokens and streams must be positive")

    @property
    def label(self) -> str:
        if self.kind == "decode_tok_s":
            return f"single-stream decode, {self.prompt_tokens:g}-token prompt (tok/s)"
        if self.kind == "batch_output_tok_s":
            return f"{self.num_seqs} streams of {self.prompt_tokens:.0f} + {self.output_tokens:.0f} tokens (output tok/s)"
        if self.kind == "tpot_s":
            return f"TPOT, {self.num_seqs} streams of {self.prompt_tokens:.0f} + {self.output_tokens:.0f} tokens (ms)"
        return f"TTFT, {self.prompt_tokens:g}-token prompt (ms)"

    def display(self, value: float) -> float:
        """``value`` in the unit of the label (times in ms)."""
        return value * 1000 if self.kind in ("ttft_s", "tpot_s") else value


@dataclass(frozen=True)
class Factors:
    """Fitted factors. ``bandwidth`` and ``compute`` are shares of the hardware row's peaks and may exceed 1
    (the host beats the row: weights that stay in cache, a faster kernel than the one the row measured)."""

    bandwidth: float
    compute: float
    step_overhead_s: float = 0.0


def predict(observation: Observation, steps: StepModel, max_num_batched_tokens: int) -> float:
    """What ``steps`` predicts for ``observation``, in the observation's own unit."""
    p, o = observation.prompt_tokens, observation.output_tokens
    if observation.kind == "decode_tok_s":
        return 1 / steps.seconds(decode_work(1, p + o / 2))
    if observation.kind == "ttft_s":
        return time_to_first_token(steps, p, 1, p, max_num_batched_tokens)
    traffic = TrafficProfile(None, _fixed(p), _fixed(o), math.inf, math.inf)
    point = batch_point(steps, traffic, observation.num_seqs, max_num_batched_tokens)
    return point.tpot_s if observation.kind == "tpot_s" else point.output_tokens_per_s


def _fixed(tokens: float) -> LengthDistribution:
    return LengthDistribution(round(tokens), round(tokens))


def with_factors(steps: StepModel, factors: Factors, source: str = "calibrated") -> StepModel:
    """``steps`` with the fitted factors: a factor above 1 raises the row's peak instead (Efficiency <= 1)."""
    bandwidth = steps.bandwidth_bytes_per_s * max(1.0, factors.bandwidth)
    links = steps.interconnect_bytes_per_s * max(1.0, factors.bandwidth)
    peak = steps.peak_flops * max(1.0, factors.compute)
    eff = replace(steps.efficiency, bandwidth=min(1.0, factors.bandwidth), compute=min(1.0, factors.compute),
                  bandwidth_source=source, compute_source=source, step_overhead_s=factors.step_overhead_s,
                  overhead_source=source)  # the GPU latencies stay as they were
    return replace(steps, bandwidth_bytes_per_s=bandwidth, interconnect_bytes_per_s=links, peak_flops=peak,
                   efficiency=eff)


@dataclass(frozen=True)
class FitResult:
    factors: Factors
    fit_on: list[Observation]
    validate_on: list[Observation]
    notes: list[str]


def split_observations(observations: list[Observation], max_num_batched_tokens: int) -> tuple[Observation, Observation]:
    """The fit points: the first single-stream decode, and the single-step TTFT nearest PREFILL_FIT_TOKENS."""
    decodes = [o for o in observations if o.kind == "decode_tok_s"]
    prefills = [o for o in observations if o.kind == "ttft_s" and o.prompt_tokens <= max_num_batched_tokens]
    if not decodes or not prefills:
        raise ConfigError("calibration needs a single-stream decode and a TTFT of at most "
                          f"{max_num_batched_tokens} prompt tokens (one step) among the measurements")
    return decodes[0], min(prefills, key=lambda o: abs(o.prompt_tokens - PREFILL_FIT_TOKENS))


def fit(observations: list[Observation], steps: StepModel, max_num_batched_tokens: int,
        step_overhead_s: float = 0.0) -> FitResult:
    """Fit bandwidth efficiency on the single-stream decode and compute efficiency on one prompt's
    prefill, given a fixed per-step overhead; the rest of ``observations`` is left for validation.

    A decode step of one sequence is memory-bound and a one-step prefill of hundreds of tokens is
    compute-bound on every row of the table; each fit point is checked to sit on its side of the
    roofline under the fitted factors, and a note says when it does not."""
    decode, prefill = split_observations(observations, max_num_batched_tokens)
    notes: list[str] = []
    # the fixed latencies of a step (GPU kernels and all-reduce calls, 0 on a CPU row) with the given overhead
    fixed = steps.latency_seconds() - steps.efficiency.step_overhead_s + step_overhead_s
    decode_s = 1 / decode.value - fixed
    prefill_s = prefill.value - fixed
    if decode_s <= 0 or prefill_s <= 0:
        raise ConfigError(f"the fixed time of a step ({fixed * 1000:g} ms: overhead and latencies) exceeds a "
                          "measured step")
    decode_work_ = decode_work(1, decode.prompt_tokens + decode.output_tokens / 2)
    prefill_work = prompt_chunk(prefill.prompt_tokens, 1)
    if steps.efficiency.link is None:
        # a tensor-parallel step also all-reduces over links running at the bandwidth's share of their peak
        bandwidth = _transfer_seconds_at_peak(steps, decode_work_) / decode_s
        prefill_s -= _allreduce_seconds_at_peak(steps, prefill_work) / min(1.0, bandwidth)
    else:  # the links keep their own share
        decode_s -= steps.link_seconds(decode_work_)
        if decode_s <= 0:
            raise ConfigError("the measured decode is shorter than its all-reduces")
        bandwidth = steps.bytes_moved(decode_work_) / steps.bandwidth_bytes_per_s / decode_s
        prefill_s -= steps.link_seconds(prefill_work)
    if prefill_s <= 0:
        raise ConfigError("the measured prefill is shorter than its all-reduces under the fitted bandwidth")
    compute = steps.flops(prefill_work) / (steps.peak_flops * prefill_s)
    factors = Factors(bandwidth, compute, step_overhead_s)
    fitted = with_factors(steps, factors)
    if fitted.compute_seconds(decode_work_) > fitted.memory_seconds(decode_work_):
        notes.append("the single-stream decode is compute-bound under the fitted factors: its bandwidth fit is a bound")
    if fitted.memory_seconds(prefill_work) > fitted.compute_seconds(prefill_work):
        notes.append("the prefill fit point is memory-bound under the fitted factors: its compute fit is a bound")
    rest = [o for o in observations if o is not decode and o is not prefill]
    return FitResult(factors, [decode, prefill], rest, notes)


def _allreduce_seconds_at_peak(steps: StepModel, work: StepWork) -> float:
    sent = steps.allreduce_bytes(work)
    return sent / steps.interconnect_bytes_per_s if sent else 0.0


def _transfer_seconds_at_peak(steps: StepModel, work: StepWork) -> float:
    return steps.bytes_moved(work) / steps.bandwidth_bytes_per_s + _allreduce_seconds_at_peak(steps, work)


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured."""
    return (predicted - measured) / measured
