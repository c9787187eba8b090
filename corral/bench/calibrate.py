"""Measure corral's offline engine on this host for ``corral plan calibrate --run``: single-stream decode,
a batch of concurrent streams, and time to first token at several prompt lengths.

Everything is timed around ``LLM.generate`` on token-id prompts (greedy, EOS ignored), as bench/run.py's
offline runner does; each prompt starts with a distinct salt token so no run reuses a previous run's prefix
cache. The figures come back as planner observations (``corral.planner.calibration.Observation``): this
module imports torch and the engine, the planner never does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.errors import ConfigError
from corral.planner.calibration import Observation

# Token ids of ordinary text pieces in a 49k vocabulary (SmolLM2's); prompts only need to be long, not meaningful.
_FIRST_ID, _ID_SPAN = 1000, 20000


@dataclass(frozen=True)
class MeasureSettings:
    decode_prompt_tokens: int = 128
    decode_tokens: int = 128
    batch_streams: int = 32
    batch_prompt_tokens: int = 64
    batch_output_tokens: int = 128
    ttft_prompt_tokens: tuple[int, ...] = (128, 512, 2048)
    repeats: int = 3
    threads: int | None = None  # None: torch's default

    def __post_init__(self) -> None:
        if min(self.decode_prompt_tokens, self.decode_tokens, self.batch_streams, self.batch_prompt_tokens,
               self.batch_output_tokens, self.repeats, *self.ttft_prompt_tokens, 1 if self.threads is None else self.threads) < 1:
            raise ConfigError("every measurement setting (--threads included) must be at least 1")


class _Prompts:
    """Distinct prompts: the first token differs per prompt, the rest is a fixed pseudo-random walk."""

    def __init__(self) -> None:
        self._next_salt = 0

    def make(self, num_tokens: int) -> list[int]:
        self._next_salt += 1
        body = [_FIRST_ID + (i * 7919) % _ID_SPAN for i in range(num_tokens - 1)]
        return [_FIRST_ID + _ID_SPAN + self._next_salt, *body]


def measure(model: str | None = None, settings: MeasureSettings | None = None,
            log: Callable[[str], None] = print) -> list[Observation]:
    """Run the measurements with corral's own offline engine and return them as observations."""
    import torch

    from corral import LLM, SamplingParams

    s = settings or MeasureSettings()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    llm = LLM(model=model, max_model_len=4096)
    prompts = _Prompts()

    def timed(batch: list[list[int]], max_tokens: int) -> tuple[float, int]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outputs)

    timed([prompts.make(32) for _ in range(4)], 8)  # warm-up: first-call allocations, kernel selection
    observations: list[Observation] = []

    decode_rates = []
    for _ in range(s.repeats):
        ttft, _ = timed([prompts.make(s.decode_prompt_tokens)], 1)
        total, tokens = timed([prompts.make(s.decode_prompt_tokens)], s.decode_tokens)
        decode_rates.append((tokens - 1) / max(total - ttft, 1e-9))
    rate = statistics.median(decode_rates)
    log(f"single-stream decode after {s.decode_prompt_tokens} prompt tokens: {rate:.1f} tok/s")
    observations.append(Observation("decode_tok_s", rate, s.decode_prompt_tokens, s.decode_tokens, 1))

    batch_rates = []
    for _ in range(s.repeats):
        elapsed, tokens = timed([prompts.make(s.batch_prompt_tokens) for _ in range(s.batch_streams)],
                                s.batch_output_tokens)
        batch_rates.append(tokens / elapsed)
    rate = statistics.median(batch_rates)
    log(f"{s.batch_streams} streams of {s.batch_prompt_tokens} + {s.batch_output_tokens} tokens: {rate:.1f} output tok/s")
    observations.append(Observation("batch_output_tok_s", rate, s.batch_prompt_tokens, s.batch_output_tokens,
                                    s.batch_streams))

    for num_tokens in s.ttft_prompt_tokens:
        ttft = statistics.median(timed([prompts.make(num_tokens)], 1)[0] for _ in range(s.repeats))
        log(f"TTFT at {num_tokens} prompt tokens: {ttft * 1000:.0f} ms")
        observations.append(Observation("ttft_s", ttft, num_tokens, 1, 1))
    return observations
