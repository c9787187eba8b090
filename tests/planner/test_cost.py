"""Cost per million tokens: input and output apart, together the replica's whole cost."""

from __future__ import annotations

import math

from corral.planner.batching import BatchPoint
from corral.planner.cost import token_cost


def point(step: float, decode_only: float, batch: int, input_per_step: float) -> BatchPoint:
    return BatchPoint(batch, step, 0.1, step, decode_only, batch / step, input_per_step / step, "compute", 1.0)


def test_input_and_output_costs_add_up_to_the_replica():
    p = point(step=0.05, decode_only=0.02, batch=10, input_per_step=40)
    cost = token_cost(p, price_per_hour=3.6, num_devices=2)  # $0.002 a second
    assert math.isclose(cost.per_million_output, 0.002 * 0.02 / 10 * 1e6)
    assert math.isclose(cost.per_million_input, 0.002 * 0.03 / 40 * 1e6)
    per_step = cost.per_million_output * 10 / 1e6 + cost.per_million_input * 40 / 1e6
    assert math.isclose(per_step, 0.002 * 0.05)
    assert cost.replica_per_hour == 7.2 and cost.fleet_per_hour is None
    assert token_cost(p, 3.6, 2, replicas=3).fleet_per_hour == 21.6


def test_no_prompt_tokens_have_no_input_cost():
    assert token_cost(point(0.01, 0.01, 4, 0), 1.0, 1).per_million_input is None
