"""Prometheus metrics, named as vLLM names them (``corral:`` instead of ``vllm:``) so existing
dashboards work. Updated from the engine thread once per step; prometheus_client is thread-safe."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from corral.engine.llm_engine import LLMEngine
from corral.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0)


@dataclass
class _Timing:
    arrival: float
    last_token: float | None = None
    num_tokens: int = 0


class EngineMetrics:
    """Implements the AsyncEngine observer hooks: ``on_add``, ``on_abort``, ``on_step``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("corral:time_to_first_token_seconds", "Time to first token.", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("corral:inter_token_latency_seconds", "Time between output tokens.", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("corral:e2e_request_latency_seconds", "Request latency, arrival to finish.",
                             registry=r, buckets=_LATENCY_BUCKETS)
        self.running = Gauge("corral:num_requests_running", "Sequences running.", registry=r)
        self.waiting = Gauge("corral:num_requests_waiting", "Sequences waiting.", registry=r)
        self.kv_usage = Gauge("corral:kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).", registry=r)
        self.prefix_queries = Counter("corral:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                      registry=r)
        self.prefix_hits = Counter("corral:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                   registry=r)
        self.kv_allocated_slots = Counter(
            "corral:kv_cache_allocated_slot_steps", "KV slots held by live requests, summed over steps.", registry=r
        )
        self.kv_empty_slots = Counter(
            "corral:kv_cache_empty_slot_steps",
            "Of those, slots holding no token (waste = empty / allocated over an interval).", registry=r,
        )
        self.prompt_tokens = Counter("corral:prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("corral:generation_tokens", "Tokens generated.", registry=r)
        self.preemptions = Counter("corral:num_preemptions", "Preemptions.", registry=r)
        self.spec_drafts = Counter("corral:spec_decode_num_drafts", "Speculative draft checks.", registry=r)
        self.spec_draft_tokens = Counter("corral:spec_decode_num_draft_tokens", "Draft tokens proposed and checked.",
                                         registry=r)
        self.spec_accepted_tokens = Counter("corral:spec_decode_num_accepted_tokens", "Draft tokens accepted.",
                                            registry=r)
        self.spec_emitted_tokens = Counter(
            "corral:spec_decode_num_emitted_tokens", "Tokens emitted by draft checks (accepted plus one each).",
            registry=r,
        )
        self.spec_acceptance = Gauge("corral:spec_decode_draft_acceptance_rate",
                                     "Accepted over proposed draft tokens since start (0-1).", registry=r)
        self.success = Counter("corral:request_success", "Finished requests, by finished_reason.", ["finished_reason"],
                               registry=r)
        self.grammar_compile = Histogram(
            "corral:structured_output_compile_seconds", "Time to compile a structured-output grammar (cache misses).",
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.grammar_mask = Histogram(
            "corral:structured_output_mask_seconds", "Per step, time to fill the grammar masks of its constrained rows.",
            registry=r, buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
        )
        self._timings: dict[str, _Timing] = {}
        self._seen = {key: 0 for key in ("queries", "hits", "preemptions", "allocated", "empty", "drafts",
                                         "draft_tokens", "accepted", "emitted")}

    def on_add(self, request_id: str) -> None:
        self._timings[request_id] = _Timing(time.monotonic())

    def on_abort(self, engine: LLMEngine, request_id: str) -> None:
        if self._timings.pop(request_id, None) is not None:
            self.success.labels(finished_reason="abort").inc()
        self._update_engine_state(engine)  # no step may follow the last abort to refresh the gauges

    def on_step(self, engine: LLMEngine, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        for output in outputs:
            timing = self._timings.get(output.request_id)
            if timing is None:
                continue
            num_tokens = sum(len(c.token_ids) for c in output.outputs)
            new = num_tokens - timing.num_tokens
            if new > 0:
                if timing.last_token is None:
                    self.ttft.observe(now - timing.arrival)
                    self.prompt_tokens.inc(len(output.prompt_token_ids))
                else:
                    self.itl.observe((now - timing.last_token) / new)
                self.generation_tokens.inc(new)
                timing.num_tokens, timing.last_token = num_tokens, now
            if output.finished:
                del self._timings[output.request_id]
                self.e2e.observe(now - timing.arrival)
                for completion in output.outputs:
                    self.success.labels(finished_reason=completion.finish_reason or "abort").inc()
        self._update_engine_state(engine)

    def _update_engine_state(self, engine: LLMEngine) -> None:
        if engine.grammars is not None:
            stats = engine.grammars.stats
            for histogram, timings in ((self.grammar_compile, stats.compile_seconds), (self.grammar_mask, stats.mask_seconds)):
                for seconds in stats.drain(timings):
                    histogram.observe(seconds)
        scheduler = engine.core.scheduler
        kv = engine.core.kv_manager
        self.running.set(len(scheduler.running))
        self.waiting.set(len(scheduler.waiting))
        self.kv_usage.set(kv.usage)
        spec = scheduler.spec_decode_stats
        self.spec_acceptance.set(spec.acceptance_rate)
        for key, counter, value in (
            ("drafts", self.spec_drafts, spec.num_drafts),
            ("draft_tokens", self.spec_draft_tokens, spec.num_draft_tokens),
            ("accepted", self.spec_accepted_tokens, spec.num_accepted_tokens),
            ("emitted", self.spec_emitted_tokens, spec.num_emitted_tokens),
            ("queries", self.prefix_queries, kv.stats.queries),
            ("hits", self.prefix_hits, kv.stats.hits),
            ("preemptions", self.preemptions, scheduler.num_preemptions),
            ("allocated", self.kv_allocated_slots, kv.occupancy.allocated_slot_steps),
            ("empty", self.kv_empty_slots, kv.occupancy.empty_slot_steps),
        ):
            counter.inc(value - self._seen[key])
            self._seen[key] = value
