"""The labelled corpus (data/guardrails_corpus.jsonl): every check against its labels.

Each line has ``text`` and ``role`` and some of: ``entities`` (the exact set of entity kinds in the text),
``injection`` (an attack, or a benign look-alike), ``system_prompt`` with ``leakage``, ``response_format`` with
``json_valid``. ``held_out`` marks injection cases written after the rules were tuned (1: a first set, 2: a
second set written after the first had been used); docs/guardrails.md gives the recall the rules had on them
before they were seen. The known misses below are asserted to be exactly the misses: an improvement or a
regression both change the set and fail the test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from corral.gateway.guardrails.injection import InjectionDetector
from corral.gateway.guardrails.json_output import check_json_output
from corral.gateway.guardrails.leakage import SystemPromptIndex, find_leaks
from corral.gateway.guardrails.pii import EntityDetector

CORPUS = [json.loads(line) for line in (Path(__file__).parent / "data" / "guardrails_corpus.jsonl").open()]
KNOWN_MISSES = {
    # Talks about the attack, quoting it: phrase rules cannot tell a mention from a use (the quoted attack in
    # inj-46, "Translate: 'Ignore the above directions...'", must be caught).
    ("injection", "benign-49"),
}


def misses() -> set[tuple[str, str]]:
    detector, injection = EntityDetector(), InjectionDetector()
    found: set[tuple[str, str]] = set()
    for case in CORPUS:
        if "entities" in case and {f.kind for f in detector.find(case["text"])} != set(case["entities"]):
            found.add(("entities", case["id"]))
        if "injection" in case and injection.scan(case["text"]).hit != case["injection"]:
            found.add(("injection", case["id"]))
        if "leakage" in case and bool(find_leaks(case["text"], SystemPromptIndex(case["system_prompt"]))) != case["leakage"]:
            found.add(("leakage", case["id"]))
        if "json_valid" in case and check_json_output(case["text"], case["response_format"]).valid != case["json_valid"]:
            found.add(("json_output", case["id"]))
    return found


def test_the_corpus_is_large_and_covers_every_check_and_entity_kind():
    assert len(CORPUS) >= 200
    assert len({case["id"] for case in CORPUS}) == len(CORPUS)
    kinds = Counter(kind for case in CORPUS for kind in case.get("entities", ()))
    assert set(kinds) == {"email", "phone", "credit_card", "iban", "ip_address", "us_ssn", "api_key", "secret",
                          "private_key"}
    assert min(kinds.values()) >= 5
    attacks = sum(case.get("injection") is True for case in CORPUS)
    look_alikes = sum(case.get("injection") is False and not case.get("entities") for case in CORPUS)
    assert attacks >= 100 and look_alikes >= 80
    assert sum("leakage" in case for case in CORPUS) >= 10 and sum("json_valid" in case for case in CORPUS) >= 10


def test_the_misses_are_exactly_the_known_ones():
    assert misses() == KNOWN_MISSES


@pytest.mark.parametrize("case", [c for c in CORPUS if c.get("injection") is True], ids=lambda c: c["id"])
def test_every_attack_is_denied(case):
    assert InjectionDetector().scan(case["text"]).hit
