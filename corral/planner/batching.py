"""Latency and throughput of one replica against its batch size (sequences running at once), in the steady
state of continuous batching with chunked prefill, and the largest batch that meets both SLOs.

With ``B`` sequences of mean prompt ``P`` and output ``O`` running, each step decodes ``B`` tokens and, since
``B / O`` sequences finish (and as many start) per step, ``B x P / O`` prompt tokens are prefilled per step
on average. A chunked-prefill scheduler (corral's, vLLM's, TensorRT-LLM's) gives each step's token budget
to the decodes first and the rest to chunks of waiting prompts: a prompt goes in as few chunks as the room
allows, so when prompts arrive more slowly than the room, only some steps carry a chunk (a whole prompt if
it fits) and the others only decode. TPOT is the mean step over that cycle, the steps with a chunk weighted
by how often they come. TTFT is the time to prefill one new prompt in such chunks while ``B - 1`` others
decode. Queueing before admission is not included (the replica count's headroom covers it).
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
    step, compute, memory = steady_step(steps, decode, prefill_tokens, prompt, max_num_batched_tokens - batch)
    ttft = time_to_first_token(steps, prompt, batch, mean_context, max_num_batched_tokens)
    return BatchPoint(
        batch=batch,
        tpot_s=step,
        ttft_s=ttft,
        step_s=step,
        decode_only_step_s=steps.seconds(decode),
        output_tokens_per_s=batch / step,
        input_tokens_per_s=prefill_tokens / step,
        bound="compute" if compute >= memory else "memory",
        request_latency_s=ttft + step * max(0.0, output - 1),
    )


def steady_step(steps: StepModel, decode: StepWork, prefill_tokens: float, prompt: float,
                room: float) -> tuple[float, float, float]:
    """Mean seconds of a steady-state step (and its mean compute and memory seconds): ``decode`` every step,
    ``prefill_tokens`` prompt tokens per step on average, in chunks of ``prompt`` cut to fit ``room``.
    A share ``prefill_tokens / chunk`` of the steps carries a chunk; when prompts come faster than that,
    every step carries ``prefill_tokens / chunk`` chunks' worth."""
    if prefill_tokens <= 0 or prompt <= 0:
        return steps.seconds(decode), steps.compute_seconds(decode), steps.memory_seconds(decode)
    num_chunks = max(1, math.ceil(prompt / room)) if room >= 1 else 1
    chunk = prompt / num_chunks
    share = min(1.0, prefill_tokens / chunk)  # of the steps that carry prompt tokens
    per_step = max(1.0, prefill_tokens / chunk)  # chunks in such a step
    work = prompt_chunk(prompt, num_chunks)
    loaded = combine(decode, StepWork(*(per_step * getattr(work, f) for f in StepWork.__dataclass_fields__)))
    mean = (1 - share) * steps.seconds(decode) + share * steps.seconds(loaded)
    compute = (1 - share) * steps.compute_seconds(decode) + share * steps.compute_seconds(loaded)
    memory = (1 - share) * steps.memory_seconds(decode) + share * steps.memory_seconds(loaded)
    return mean, compute, memory


def prompt_chunk(prompt: float, num_chunks: int) -> StepWork:
    """One of the ``num_chunks`` equal chunks of a ``prompt``-token prompt, on average: its tokens attend to
    (prompt + 1) / 2 keys each, the last chunk makes the logits, and each chunk reads the K/V its earlier
    chunks cached once per layer (attention kernels stream the cached keys past the chunk's queries, not
    once per query token): prompt x (num_chunks - 1) / 2 cached tokens over the whole prompt."""
    chunk = prompt / num_chunks
    return StepWork(chunk, 1 / num_chunks, chunk * (prompt + 1) / 2, prompt * (num_chunks - 1) / (2 * num_chunks))


def time_to_first_token(steps: StepModel, prompt: float, batch: int, mean_context: float,
                        max_num_batched_tokens: int) -> float:
    """Prefill of one prompt in chunks of what the budget leaves after ``batch - 1`` decodes; infinite when
    the decodes take the whole budget."""
    room = max_num_batched_tokens - (batch - 1)
    if room < 1:
        return math.inf
    num_steps = max(1, math.ceil(prompt / room))
    # every step carries the running decodes and one chunk
    decodes = decode_work(batch - 1, mean_context)
    return num_steps * steps.seconds(combine(decodes, prompt_chunk(prompt, num_steps)))


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
