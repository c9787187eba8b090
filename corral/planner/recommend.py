"""Recommendations: every hardware row x weight format x tensor parallelism x KV dtype that fits the model
and meets the SLOs, ranked by what a million output tokens cost, each with the constraint that caps its
batch; the rest counted by why they fail.

Ranking: the replica's (or, with a request rate, the whole fleet's) hourly price over the output tokens it
produces in that hour, prompts included: at full SLO batch that is ``$/M output + $/M input x P / O``; with
``--rps`` the fleet is a whole number of replicas, so a small rate favours small hardware, as it should.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from corral.errors import ConfigError
from corral.planner.calibration_store import StoredCalibration
from corral.planner.hardware import HARDWARE, Hardware, local_cpu_name
from corral.planner.model_files import load_model_shape
from corral.planner.plan import Plan, PlanRequest, build_plan

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Candidate:
    hardware: str
    format: str
    tensor_parallel_size: int
    kv_dtype: str

    def __str__(self) -> str:
        return f"{self.hardware} {self.format} tp{self.tensor_parallel_size} kv {self.kv_dtype}"


@dataclass(frozen=True)
class Recommendation:
    candidate: Candidate
    plan: Plan
    cost_per_million_output_all_in: float  # the ranking key
    full_load_cost_per_million_output: float  # one replica at its SLO batch, prompts included
    binding: str  # what caps the SLO batch: memory, max_num_seqs, ttft_slo or tpot_slo
    roofline: str  # which side the SLO batch's step sits on: bandwidth or compute
    explanation: str


@dataclass(frozen=True)
class Rejection:
    candidate: Candidate
    reason: str  # memory, ttft_slo, tpot_slo or unsupported
    detail: str


@dataclass(frozen=True)
class Recommendations:
    accepted: list[Recommendation]  # cheapest first
    rejected: list[Rejection]

    @property
    def rejection_counts(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejected).most_common())


def candidates(hw: Hardware, gguf_model: bool, fmt: str, tp: int | None, kv_dtype: str) -> list[Candidate]:
    """The choices to try on ``hw``; a format, TP or KV dtype given on the command line is the only one tried."""
    if fmt != "auto":
        formats = [fmt]
    elif hw.kind == "cpu":
        formats = ["fp32", "bf16", "int8", "int4-g32"]  # corral's int4 default group
    else:
        formats = ["bf16", "fp8", "int8", "int4-g128"]  # AWQ/GPTQ checkpoints' usual group
    if gguf_model and fmt == "auto":
        formats.insert(0, "file")
    formats = [f for f in formats if f not in ("fp8", "bf16", "int8") or f in hw.peak_flops]
    tps = [tp] if tp is not None else ([1] if hw.kind == "cpu" else list(TENSOR_PARALLEL_SIZES))
    if kv_dtype != "auto":
        kvs = [kv_dtype]
    else:
        kvs = ["auto", "int8"] if hw.kind == "cpu" else ["auto", *(["fp8"] if "fp8" in hw.peak_flops else [])]
    return [Candidate(hw.name, f, t, k) for f in formats for t in tps for k in kvs]


def recommend(base: PlanRequest, calibration: tuple[StoredCalibration | None, str] | None = None,
              tensor_parallel_size: int | None = None) -> Recommendations:
    """Plan every candidate for ``base``'s model, traffic and SLOs; ``base.hardware``, ``base.format`` and
    ``base.kv_dtype`` (when not auto) and ``tensor_parallel_size`` (when given) narrow the search."""
    if base.replicas is not None:
        raise ConfigError("--replicas does not apply to recommendations: each choice gets the replicas --rps needs")
    if tensor_parallel_size is not None and tensor_parallel_size < 1:
        raise ConfigError("--tp must be at least 1")
    if base.price_per_hour is not None and base.hardware is None:
        raise ConfigError("--price-per-hour with recommendations needs one --hardware row to price")
    model = load_model_shape(base.model)
    local = local_cpu_name()
    rows = [HARDWARE[local if base.hardware in (None, "local") else _row_name(base.hardware)]] \
        if base.hardware is not None else list(HARDWARE.values())
    accepted: list[Recommendation] = []
    rejected: list[Rejection] = []
    seen: set[Candidate] = set()
    for hw in rows:
        for c in candidates(hw, bool(model.file_tensors), base.format, tensor_parallel_size, base.kv_dtype):
            fmt, _, group = c.format.partition("-g")
            request = replace(base, hardware="local" if hw.name == local else hw.name, format=fmt,
                              group_size=int(group) if group else base.group_size,
                              tensor_parallel_size=c.tensor_parallel_size, kv_dtype=c.kv_dtype)
            try:
                plan = build_plan(request, model_shape=model, calibration=calibration)
            except ConfigError as exc:
                rejected.append(Rejection(c, "unsupported", str(exc)))
                continue
            outcome = _judge(c, plan)
            if outcome.candidate in seen:  # "auto" resolved to a choice already tried
                continue
            seen.add(outcome.candidate)
            (accepted if isinstance(outcome, Recommendation) else rejected).append(outcome)
    # ties (a fleet of one replica costs the same at any speed): the cheaper at full load, then fewer devices
    accepted.sort(key=lambda r: (r.cost_per_million_output_all_in, r.full_load_cost_per_million_output,
                                 r.plan.parallel.num_devices))
    return Recommendations(accepted, rejected)


def _row_name(name: str) -> str:
    from corral.planner.hardware import hardware

    return hardware(name).name


def _judge(c: Candidate, plan: Plan) -> Recommendation | Rejection:
    t = plan.traffic
    candidate = replace(c, kv_dtype=plan.memory.kv_dtype, format=plan.weight_format.name)
    if plan.max_batch == 0:
        return Rejection(candidate, "memory", _memory_detail(plan))
    best = plan.best
    if best is None:
        one = plan.points[0]
        if one.tpot_s > t.slo_tpot_s:
            return Rejection(candidate, "tpot_slo", f"one sequence's TPOT is {one.tpot_s * 1000:,.1f} ms")
        return Rejection(candidate, "ttft_slo", f"one sequence's TTFT is {one.ttft_s * 1000:,.1f} ms")
    binding, why = _binding(plan)
    roofline = "compute" if best.bound == "compute" else "bandwidth"
    explanation = f"{why}; the step is {roofline}-bound at {best.batch} sequences"
    return Recommendation(candidate, plan, _all_in_cost(plan), _full_load_cost(plan), binding, roofline, explanation)


def _memory_detail(plan: Plan) -> str:
    m = plan.memory
    if m.weight.per_device > m.usable_bytes:
        return f"weights {m.weight.per_device / 2**30:,.1f} GiB per device exceed the usable {m.usable_bytes / 2**30:,.1f} GiB"
    return f"the KV pool ({m.num_kv_tokens:,} tokens) cannot hold one sequence of {plan.traffic.max_seq_len} tokens"


def _binding(plan: Plan) -> tuple[str, str]:
    """What stops the batch from growing past the SLO batch: the cap on it, or the SLO its next size misses."""
    best, t = plan.best, plan.traffic
    assert best is not None
    if best.batch >= plan.max_batch:
        if plan.max_batch == plan.max_num_seqs:
            return "max_num_seqs", f"the scheduler's cap of {plan.max_num_seqs} sequences"
        return "memory", f"KV memory holds {plan.max_batch} sequences of {t.max_seq_len} tokens"
    from corral.planner.batching import batch_point

    assert plan.steps is not None
    nxt = batch_point(plan.steps, t, best.batch + 1, plan.max_num_batched_tokens)
    if nxt.tpot_s > t.slo_tpot_s:
        return "tpot_slo", f"TPOT reaches the {t.slo_tpot_s * 1000:g} ms SLO at {best.batch + 1} sequences"
    return "ttft_slo", f"TTFT reaches the {t.slo_ttft_s * 1000:g} ms SLO at {best.batch + 1} sequences"


def _all_in_cost(plan: Plan) -> float:
    """Dollars per million output tokens, prompts included: the fleet's hourly price over the traffic's
    output tokens when a rate is given, else one replica at its full SLO batch."""
    cost = plan.cost
    assert cost is not None
    if plan.traffic_plan is not None and cost.fleet_per_hour is not None:
        output_per_hour = plan.traffic_plan.requests_per_s * plan.traffic.output.mean * 3600
        return cost.fleet_per_hour / output_per_hour * 1e6
    return _full_load_cost(plan)


def _full_load_cost(plan: Plan) -> float:
    best, cost = plan.best, plan.cost
    assert best is not None and cost is not None
    return cost.replica_per_hour / (best.output_tokens_per_s * 3600) * 1e6
