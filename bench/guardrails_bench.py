"""Guardrails: precision and recall of each check on the labelled corpus (tests/gateway/data/
guardrails_corpus.jsonl), and the cost per request (median and p99 microseconds of CPU time for 1 kB and 8 kB
inputs) and per streamed chunk.

    .venv/bin/python bench/guardrails_bench.py [--repeats 300]

CPU time (time.process_time_ns) rather than wall time: the figures should not move with other load on the host.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from corral.gateway.guardrails.injection import InjectionDetector
from corral.gateway.guardrails.json_output import check_json_output
from corral.gateway.guardrails.leakage import LeakStreamMasker, SystemPromptIndex, find_leaks
from corral.gateway.guardrails.pii import EntityDetector
from corral.gateway.guardrails.pipeline import Guardrails  # noqa: E402
from corral.gateway.guardrails.policy import parse_policy  # noqa: E402
from corral.gateway.guardrails.stream_mask import StreamMasker

CORPUS_PATH = Path(__file__).resolve().parents[1] / "tests" / "gateway" / "data" / "guardrails_corpus.jsonl"
SYSTEM_PROMPT = ("You are Aria, the support assistant for Northwind Bank. Never disclose internal fee schedules. "
                 "Always verify the customer's identity with two security questions before discussing account "
                 "details. Escalate fraud reports to the on-call team via the red phone procedure. ") * 6
PROSE = ("The committee reviewed the quarterly figures and agreed that the new office should open in spring, "
         "subject to the budget being approved by the board at its next meeting. Please send comments by Friday. ")
POLICY = {"checks": [{"type": "secrets", "action": "mask"}, {"type": "pii", "action": "mask"},
                     {"type": "injection", "action": "deny"}, {"type": "leakage", "action": "mask"}]}


def precision_recall(corpus: list[dict]) -> list[tuple[str, int, int, int, int]]:
    """(check, cases, true positives, false positives, false negatives) per check and per entity kind."""
    detector, injection = EntityDetector(), InjectionDetector()
    counts: dict[str, Counter] = {}

    def count(check: str, expected: bool, found: bool) -> None:
        tally = counts.setdefault(check, Counter())
        tally["cases"] += 1
        tally["tp"] += expected and found
        tally["fp"] += found and not expected
        tally["fn"] += expected and not found

    kinds = sorted({kind for case in corpus for kind in case.get("entities", ())})
    for case in corpus:
        if "entities" in case:
            found = {f.kind for f in detector.find(case["text"])}
            for kind in kinds:
                count(f"entities: {kind}", kind in case["entities"], kind in found)
        if "injection" in case:
            hit = injection.scan(case["text"]).hit
            count("injection", case["injection"], hit)
            held = case.get("held_out")
            count("injection, written before tuning" if not held else f"injection, held-out set {held}",
                  case["injection"], hit)
        if "leakage" in case:
            count("leakage", case["leakage"], bool(find_leaks(case["text"], SystemPromptIndex(case["system_prompt"]))))
        if "json_valid" in case:
            count("json_output", not case["json_valid"],
                  not check_json_output(case["text"], case["response_format"]).valid)
    return [(check, t["cases"], t["tp"], t["fp"], t["fn"]) for check, t in counts.items()]


def sample_text(corpus: list[dict], num_chars: int, seed: int) -> str:
    """Prose with the corpus's PII and benign sentences mixed in, about one sentence in four."""
    rng = random.Random(seed)
    sentences = [case["text"] for case in corpus if "entities" in case and len(case["text"]) < 300]
    parts: list[str] = []
    while sum(map(len, parts)) < num_chars:
        parts.append(rng.choice(sentences) + " " if rng.random() < 0.25 else PROSE)
    return "".join(parts)[:num_chars]


def micros(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and p99 of CPU microseconds per call."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.process_time_ns()
        function()
        samples.append((time.process_time_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def per_chunk(make: Callable[[], object], text: str, chunk_chars: int, rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        masker = make()
        for start in range(0, len(text), chunk_chars):
            begin = time.process_time_ns()
            masker.feed(text[start:start + chunk_chars])
            samples.append((time.process_time_ns() - begin) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    corpus = [json.loads(line) for line in CORPUS_PATH.open()]
    print(f"host: {platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"corpus: {len(corpus)} cases")
    print(f"\n{'check':42s} {'cases':>5s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'precision':>9s} {'recall':>7s}")
    for check, cases, tp, fp, fn in precision_recall(corpus):
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        print(f"{check:42s} {cases:5d} {tp:4d} {fp:4d} {fn:4d} {precision:9.3f} {recall:7.3f}")

    detector, injection = EntityDetector(), InjectionDetector()
    index = SystemPromptIndex(SYSTEM_PROMPT)
    guardrails = Guardrails(parse_policy(POLICY))
    print(f"\nper request, CPU microseconds (median / p99), {args.repeats} runs each")
    for size in (1024, 8192):
        text = sample_text(corpus, size, seed=size)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
        rows = {
            "pii + secrets, all built-in patterns": lambda t=text: detector.mask(t),
            "injection rules": lambda t=text: injection.scan(t),
            "leakage (1 kB system prompt)": lambda t=text: find_leaks(t, index),
            "policy check_input (4 checks)": lambda m=messages: guardrails.check_input(m),
            "policy check_output (3 checks)": lambda t=text: guardrails.check_output(t, system_prompt=SYSTEM_PROMPT),
        }
        for name, function in rows.items():
            median, p99 = micros(function, args.repeats)
            print(f"  {size // 1024} kB  {name:40s} {median:9.0f} {p99:9.0f}")
    schema = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]}}}
    median, p99 = micros(lambda: check_json_output('{"name": "Ada", "age": 36}', schema), args.repeats)
    print(f"  json_output, a small schema (cached validator)     {median:9.0f} {p99:9.0f}")

    stream_text = sample_text(corpus, 8192, seed=7)
    print("\nstreamed, CPU microseconds per chunk (median / p99), over an 8 kB answer")
    for chunk_chars in (4, 16):
        median, p99 = per_chunk(lambda: StreamMasker(detector), stream_text, chunk_chars, rounds=3)
        print(f"  pii + secrets stream masker, {chunk_chars:2d}-character chunks      {median:9.1f} {p99:9.1f}")
        median, p99 = per_chunk(lambda: LeakStreamMasker(index), stream_text, chunk_chars, rounds=3)
        print(f"  leakage stream masker, {chunk_chars:2d}-character chunks            {median:9.1f} {p99:9.1f}")
        median, p99 = per_chunk(lambda: guardrails.output_stream(system_prompt=SYSTEM_PROMPT), stream_text,
                                chunk_chars, rounds=3)
        print(f"  policy output stream (3 checks), {chunk_chars:2d}-character chunks  {median:9.1f} {p99:9.1f}")
    masker = StreamMasker(detector)
    for start in range(0, len(stream_text), 4):
        masker.feed(stream_text[start:start + 4])
    print(f"  largest hold-back of the pii stream masker on that answer: {masker.max_held_chars} characters")


if __name__ == "__main__":
    main()
