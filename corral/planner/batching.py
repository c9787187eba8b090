"""Latency and throughput of one replica against its batch size (sequences running at once), in the steady
state of continuous batching with chunked prefill, and the largest batch that meets both SLOs.

With ``B`` sequences of mean prompt ``P`` and output ``O`` running, each step decodes ``B`` tokens and, since
``B / O`` sequences finish (and as many start) per step, prefills ``B x P / O`` prompt tokens on average.
TPOT is that step's time. TTFT is the time to prefill one new prompt while ``B - 1`` others decode: the
step's token budget goes to the decodes first (as corral's and vLLM's schedulers do), the rest to chunks
of the prompt. Queueing before admission is not included (the replica count's headroom covers it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral.planner.roofline import StepModel, StepWork, combine, decode_work
from corral.planner.traffic import TrafficProfile


@dataclass(frozen=True)
class BatchPoint:
    batch: int
    tpot_s: float
    ttft_s: float
    step_s: float  # one steady-state step: B decodes plus B x P / O prompt tokens
    decode_only_step_s: float  # the same step without the prompt tokens
    output_tokens_per_s: float
    input_tokens_per_s: float
    bound: str  # "compute" or "memory": which side of the roofline the steady-state step sits on
    request_latency_s: float  # TTFT + TPOT x (output - 1): W of Little's law


def batch_point(steps: StepModel, traffic: TrafficProfile, batch: int, max_num_batched_tokens: int) -> BatchPoint:
    prompt, output = traffic.prompt.mean, traffic.output.mean
    mean_context = prompt + output / 2
    prefill_tokens = batch * prompt / output
    decode = decode_work(batch, mean_context)
    steady = combine(decode, prompt_share(prefill_tokens, prompt))
    step = steps.seconds(steady)
    ttft = time_to_first_token(steps, prompt, batch, mean_context, max_num_batched_tokens)
    return BatchPoint(
        batch=batch,
        tpot_s=step,
        ttft_s=ttft,
        step_s=step,
        decode_only_step_s=steps.seconds(decode),
        output_tokens_per_s=batch / step,
        input_tokens_per_s=prefill_tokens / step,
        bound="compute" if steps.compute_seconds(steady) >= steps.memory_seconds(steady) else "memory",
        request_latency_s=ttft + step * max(0.0, output - 1),
    )


def prompt_share(num_tokens: float, prompt: float) -> StepWork:
    """``num_tokens`` prompt tokens drawn evenly from prompts of ``prompt`` tokens: token i attends to i + 1
    keys, (prompt + 1) / 2 on average, about half of them read from the cache."""
    return StepWork(num_tokens, 0, num_tokens * (prompt + 1) / 2, num_tokens * prompt / 2)


def time_to_first_token(steps: StepModel, prompt: float, batch: int, mean_context: float,
                        max_num_batched_tokens: int) -> float:
    """Prefill of one prompt in chunks of what the budget leaves after ``batch - 1`` decodes; infinite when
    the decodes take the whole budget."""
    room = max_num_batched_tokens - (batch - 1)
    if room < 1:
        return math.inf
    num_steps = max(1, math.ceil(prompt / room))
    chunk = prompt / num_steps
    # every step carries the running decodes; the chunks together attend to prompt^2 / 2 pairs
    decodes = decode_work(batch - 1, mean_context)
    chunk_work = StepWork(chunk, 1 / num_steps, prompt * (prompt + 1) / 2 / num_steps, prompt / 2)
    return num_steps * steps.seconds(combine(decodes, chunk_work))


def largest_batch_meeting_slos(steps: StepModel, traffic: TrafficProfile, max_batch: int,
                               max_num_batched_tokens: int) -> BatchPoint | None:
    """The largest batch in [1, max_batch] whose TTFT and TPOT are within the SLOs (both grow with the
    batch, so a binary search finds it), or None if even one sequence misses them."""

    def meets(batch: int) -> bool:
        point = batch_point(steps, traffic, batch, max_num_batched_tokens)
        return point.ttft_s <= traffic.slo_ttft_s and point.tpot_s <= traffic.slo_tpot_s

    if max_batch < 1 or not meets(1):
        return None
    low, high = 1, max_batch  # meets(low) holds
    while low < high:
        mid = (low + high + 1) // 2
        if meets(mid):
            low = mid
        else:
            high = mid - 1
    return batch_point(steps, traffic, low, max_num_batched_tokens)


def sweep_batches(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes = [1 << i for i in range(max(1, max_batch).bit_length()) if 1 << i <= max_batch]
    if max_batch >= 1 and sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes
