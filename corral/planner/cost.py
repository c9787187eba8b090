"""Cost per million tokens, input and output apart.

A replica costs ``price_per_hour x devices``. At batch ``B`` a steady-state step takes ``step_s`` and yields
``B`` output tokens and ``B x P / O`` input tokens; without its prompt tokens it would take
``decode_only_step_s``. Output tokens carry the decode-only time, input tokens the difference: the two
costs add up to the replica's whole cost while it runs that batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.planner.batching import BatchPoint

MILLION = 1_000_000


@dataclass(frozen=True)
class TokenCost:
    replica_per_hour: float
    per_million_input: float | None  # None: no input tokens (an empty prompt)
    per_million_output: float
    fleet_per_hour: float | None = None  # every replica the traffic needs, when a traffic rate was given


def token_cost(point: BatchPoint, price_per_hour: float, num_devices: int, replicas: int | None = None) -> TokenCost:
    replica_per_s = price_per_hour * num_devices / 3600
    prefill_s = max(0.0, point.step_s - point.decode_only_step_s)
    input_per_step = point.input_tokens_per_s * point.step_s
    per_input = replica_per_s * prefill_s / input_per_step * MILLION if input_per_step > 0 else None
    per_output = replica_per_s * point.decode_only_step_s / point.batch * MILLION
    fleet = None if replicas is None else price_per_hour * num_devices * replicas
    return TokenCost(price_per_hour * num_devices, per_input, per_output, fleet)
