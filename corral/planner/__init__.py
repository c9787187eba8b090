"""Capacity and cost planning without torch or the engine: weight and KV memory, a roofline of prefill and
decode per batch size, the largest batch within TTFT/TPOT SLOs, replicas for a traffic rate, and cost per
million tokens (docs/planner.md). ``build_plan(PlanRequest(...))`` is the entry point."""
