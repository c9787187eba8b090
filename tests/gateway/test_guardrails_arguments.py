"""The output checks of a tool call's arguments (arguments.py): masked inside the JSON's strings so that it stays
JSON, the same whatever the fragments, and released by the stream guard with the tool call's index."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.gateway.guard_path import CompiledPolicy, RequestGuard
from corral.gateway.guard_stream import StreamGuard
from corral.gateway.guardrails.pipeline import Guardrails
from corral.gateway.guardrails.policy import parse_policy
from corral.gateway.metrics import GatewayMetrics
from tests.gateway.guardrails_samples import planted_texts
from tests.gateway.test_guardrails_stream_mask import leaked

SYSTEM = "You are Aria, the support assistant for Northwind Bank."
MASKING = Guardrails(parse_policy({"checks": [{"type": "secrets"}, {"type": "pii"},
                                              {"type": "leakage", "min_words": 4}, {"type": "json_output"}]}))


def streamed(arguments: str, cuts: list[int], guardrails: Guardrails = MASKING) -> tuple[str, object]:
    stream = guardrails.arguments_stream(SYSTEM)
    bounds = [0, *cuts, len(arguments)]
    output = "".join(stream.feed(arguments[a:b]) for a, b in zip(bounds, bounds[1:])) + stream.finish()
    return output, stream


@pytest.mark.parametrize(("arguments", "masked"), [
    # An address right after an escaped line break, one written with an escaped "@", an unescaped one.
    (r'{"body": "Hi,\njane@example.com", "x": "a\u0040example.org", "y": "bob@example.org"}',
     r'{"body": "Hi,\n[EMAIL]", "x": "[EMAIL]", "y": "[EMAIL]"}'),
    # The key is context for its value; a number holding an entity becomes a string; other numbers stay.
    ('{"ssn": "078051121", "card": 4111111111111111, "n": 42, "ok": true}',
     '{"ssn": "[US_SSN]", "card": "[CREDIT_CARD]", "n": 42, "ok": true}'),
    # A secret between escaped quotes: the quotes stay escaped around the label.
    (r'{"cmd": "export DB_PASSWORD=\"s3cr3tPassw0rd\" && run"}', r'{"cmd": "export DB_PASSWORD=\"[SECRET]\" && run"}'),
    # A leak running over two strings: each string gets the label, the JSON between them stays.
    ('["You are Aria, the", "support assistant"]', '["[SYSTEM_PROMPT]", "[SYSTEM_PROMPT]"]'),
    ('{"a": [1, 2.5e3, null], "b": "plain \\u00e9"}', '{"a": [1, 2.5e3, null], "b": "plain \\u00e9"}'),
])
def test_masks_stay_inside_the_json_strings(arguments, masked):
    result = MASKING.check_arguments(arguments, SYSTEM)
    assert result.text == masked
    json.loads(result.text)
    assert streamed(arguments, list(range(1, len(arguments))))[0] == masked


def test_what_is_not_json_is_still_checked():
    assert MASKING.check_arguments('{"to": "jane@example.com').text == '{"to": "[EMAIL]'  # cut short
    assert MASKING.check_arguments("mail jane@example.com").text == 'mail "[EMAIL]"'  # bare words


def test_a_deny_stops_the_arguments_before_the_secret():
    guardrails = Guardrails(parse_policy({"checks": [{"type": "secrets", "action": "deny"}]}))
    stream = guardrails.arguments_stream()
    sent = [stream.feed(fragment) for fragment in ['{"key": "AKIA2E0A', '8F3B244C9986"', ', "more": 1}']]
    assert "".join(sent) == '{"key": "' and stream.denied and stream.finish() == ""
    assert stream.verdict.denial.check == "secrets"


@st.composite
def planted_arguments(draw) -> tuple[str, list[str]]:
    """Arguments (JSON, escaped as json.dumps escapes, ASCII only or not) with entities planted in its strings."""
    values, planted = {}, []
    for key in draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True)):
        text, entities = draw(planted_texts(max_entities=2))
        values[key] = text
        planted += entities
    values["n"] = draw(st.integers(0, 10**6))
    return json.dumps(values, ensure_ascii=draw(st.booleans())), planted


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_fragments_give_the_whole_arguments_masking_as_valid_json(data):
    arguments, planted = data.draw(planted_arguments())
    cuts = sorted(data.draw(st.sets(st.integers(1, len(arguments) - 1), max_size=30)))
    whole = MASKING.check_arguments(arguments, SYSTEM)
    output, stream = streamed(arguments, cuts)
    assert output == whole.text and stream.verdict == whole.verdict
    masked = json.loads(output)
    assert set(masked) == set(json.loads(arguments)) and masked["n"] == json.loads(arguments)["n"]
    assert not leaked(" ".join(value for value in masked.values() if isinstance(value, str)), planted)


def tool_call_chunk(index: int, fragment: str, **extra) -> dict:
    return {"id": "c", "choices": [{"index": 0, "finish_reason": None,
                                    "delta": {"tool_calls": [{"index": index, **extra,
                                                              "function": {"arguments": fragment}}]}}]}


def test_the_stream_guard_keeps_each_tool_call_apart_and_releases_held_arguments_at_the_end():
    policy = CompiledPolicy.compile(parse_policy({"checks": [{"type": "pii", "action": "mask"}]}))
    guard = RequestGuard(policy, GatewayMetrics())
    stream_guard = StreamGuard(guard, None, None)
    sent = [stream_guard.rewrite(tool_call_chunk(0, "", id="call_a", type="function")),
            stream_guard.rewrite(tool_call_chunk(0, '{"to": "jane@exa')),
            stream_guard.rewrite(tool_call_chunk(1, '{"to": "bob@exa', id="call_b")),
            stream_guard.rewrite(tool_call_chunk(0, 'mple.com", "cc": "ann@exa')),  # cut short: no closing
            stream_guard.rewrite(tool_call_chunk(1, 'mple.org"}'))]
    calls = [call for chunks in sent for chunk in chunks for call in chunk["choices"][0]["delta"]["tool_calls"]]
    assert calls == [{"index": 0, "id": "call_a", "type": "function", "function": {"arguments": ""}},
                     {"index": 0, "function": {"arguments": '{"to": "'}},
                     {"index": 1, "id": "call_b", "function": {"arguments": '{"to": "'}},
                     {"index": 0, "function": {"arguments": '[EMAIL]", "cc": "'}},
                     {"index": 1, "function": {"arguments": '[EMAIL]"}'}}]
    [last] = stream_guard.finish_all()
    assert last["choices"] == [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ann@exa"}}]},
                                "finish_reason": None}]
    record = guard.to_record()["output"]
    assert [(r["choice"], r.get("tool_call"), r["action"]) for r in record] == [(0, None, None), (0, 0, "mask"),
                                                                              (0, 1, "mask")]
