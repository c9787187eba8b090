"""Structured output on the default model: what the grammar mask costs one stream, and how many outputs of a
varied set of JSON Schemas parse and validate.

Decode rate: one request at a time, 128 greedy tokens, free text against the same prompt constrained by a JSON
Schema whose one string is at least 1,000 characters long (so both decode exactly 128); decode tok/s = 127 / (time of the 128-token
request - time of a 1-token request), median over ``--repeats`` alternating pairs. Mask time: the engine's own
per-step mask timings (one constrained row) during the constrained runs, p50 and p99. Validity: each schema of
tests/structured/schemas.json once (the schema in the prompt, as clients send it), sampled (temperature 0.7,
seeded), up to ``--max-tokens`` tokens; an output counts when it parses and validates (jsonschema with format
checks), and those the budget closed early (finish_reason "length", json_closer.py) are counted apart.

    .venv/bin/python bench/structured_output.py [--repeats 5] [--max-tokens 384]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jsonschema

from corral import LLM, SamplingParams
from corral.platform import cpu_flags
from corral.sample.params import StructuredOutputsParams

SCHEMAS = json.loads((Path(__file__).parent.parent / "tests/structured/schemas.json").read_text())
PROMPT = "Write a long story about a dragon who learns to bake bread."
# A JSON object whose one string must run past 128 tokens: the grammar allows no EOS before then.
LONG_STRING = StructuredOutputsParams(json=json.dumps({
    "type": "object", "properties": {"story": {"type": "string", "minLength": 1000}}, "required": ["story"],
    "additionalProperties": False,
}))


def timed(llm: LLM, prompt: str, params: SamplingParams) -> float:
    start = time.perf_counter()
    llm.generate([prompt], params, use_tqdm=False)
    return time.perf_counter() - start


def decode_rates(llm: LLM, repeats: int) -> dict[str, list[float]]:
    chat = llm.get_tokenizer().apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    rates: dict[str, list[float]] = {"free": [], "constrained": []}
    for r in range(repeats):
        for name, spec in (("free", None), ("constrained", LONG_STRING)):
            prompt = f"Run {r}. {chat}"
            first = timed(llm, prompt, SamplingParams(temperature=0, max_tokens=1, structured_outputs=spec))
            whole = timed(llm, prompt, SamplingParams(temperature=0, max_tokens=128, ignore_eos=spec is None,
                                                      structured_outputs=spec))
            rates[name].append(127 / (whole - first))
    return rates


def validity(llm: LLM, max_tokens: int) -> tuple[int, int, list[str]]:
    """(outputs that validate, outputs closed early for the budget, failures)."""
    tokenizer = llm.get_tokenizer()
    valid, closed_early, failures = 0, 0, []
    for i, case in enumerate(SCHEMAS):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Reply with JSON matching this schema: {json.dumps(case['schema'])}"}],
            add_generation_prompt=True,
        )
        params = SamplingParams(temperature=0.7, seed=i, max_tokens=max_tokens,
                                structured_outputs=StructuredOutputsParams(json=json.dumps(case["schema"])))
        completion = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
        if completion.finish_reason == "length":
            closed_early += 1
            print(f"  {case['name']}: closed for the budget after {len(completion.token_ids)} tokens")
        try:
            jsonschema.validate(json.loads(completion.text), case["schema"], format_checker=jsonschema.FormatChecker())
            valid += 1
        except (ValueError, jsonschema.ValidationError) as error:
            failures.append(f"{case['name']}: {str(error).splitlines()[0]}")
    return valid, closed_early, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=384, help="budget of each validity request")
    args = parser.parse_args()
    llm = LLM()
    stats = llm.engine.grammars.stats
    llm.generate(["warm up"], SamplingParams(max_tokens=8, structured_outputs=LONG_STRING), use_tqdm=False)
    stats.drain(stats.mask_seconds)
    rates = decode_rates(llm, args.repeats)
    masks = sorted(stats.drain(stats.mask_seconds))
    valid, closed_early, failures = validity(llm, args.max_tokens)
    free, constrained = statistics.median(rates["free"]), statistics.median(rates["constrained"])
    flags = cpu_flags()
    kind = "Intel with AMX" if "amx_int8" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    print(f"host: {kind}; {args.repeats} repeats")
    print(f"one stream, decode tok/s: free {free:.1f}, constrained {constrained:.1f} "
          f"({constrained / free:.2f}x of free)")
    print(f"mask per constrained token: p50 {1e6 * masks[len(masks) // 2]:.0f} us, "
          f"p99 {1e6 * masks[int(0.99 * (len(masks) - 1))]:.0f} us over {len(masks)} steps")
    print(f"schemas: {valid}/{len(SCHEMAS)} valid, {closed_early} of them closed early for the budget")
    for failure in failures:
        print("  ", failure)


if __name__ == "__main__":
    main()
