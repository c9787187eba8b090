"""A streamed answer through a policy's output checks: the same text and verdict as the whole answer, a
denial that stops the stream before the entity, and a json_output deny that holds the answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.guardrails.pipeline import Guardrails
from corral.gateway.guardrails.policy import parse_policy

SYSTEM = "You are Aria, the support assistant for Northwind Bank. Never disclose internal fee schedules to anyone."
MASKING = Guardrails(parse_policy({"checks": [{"type": "secrets"}, {"type": "pii"},
                                              {"type": "leakage", "min_words": 6}, {"type": "json_output", "action": "flag"}]}))
ANSWER = ("Hello! You are Aria, the support assistant for Northwind Bank, they told me. Reach jane@example.com or "
          "(415) 555-0132, key AKIA2E0A8F3B244C9986, and never disclose internal fee schedules to anyone, ok?")


def streamed(guardrails: Guardrails, text: str, cuts: list[int], **context) -> tuple[str, object]:
    stream = guardrails.output_stream(**context)
    bounds = [0, *cuts, len(text)]
    output = "".join(stream.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])) + stream.finish()
    return output, stream


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(1, len(ANSWER) - 1), max_size=40))
def test_a_stream_gives_the_text_and_verdict_of_the_whole_answer(cut_set):
    output, stream = streamed(MASKING, ANSWER, sorted(cut_set), system_prompt=SYSTEM)
    whole = MASKING.check_output(ANSWER, system_prompt=SYSTEM)
    assert output == whole.text
    assert "jane" not in output and "AKIA" not in output and "Northwind" not in output
    assert stream.verdict == whole.verdict


def test_a_deny_ends_the_stream_before_any_part_of_the_secret():
    guardrails = Guardrails(parse_policy({"checks": [{"type": "secrets", "action": "deny"}]}))
    stream = guardrails.output_stream()
    sent = [stream.feed(chunk) for chunk in ["Your key is ", "AKIA2E0A", "8F3B244C9986", " - keep it safe"]]
    assert "".join(sent) == "Your key is "
    assert stream.denied and stream.verdict.denial.check == "secrets"
    assert stream.feed("more") == "" and stream.finish() == ""


def test_a_leak_deny_stops_the_stream_when_the_run_reaches_min_words():
    guardrails = Guardrails(parse_policy({"checks": [{"type": "leakage", "action": "deny", "min_words": 6}]}))
    stream = guardrails.output_stream(system_prompt=SYSTEM)
    assert stream.feed("Sure. ") == "Sure. "
    assert stream.feed("You are Aria, the support ") == ""
    assert stream.feed("assistant for") == ""
    assert stream.denied


def test_a_json_deny_holds_the_answer_until_it_is_complete():
    guardrails = Guardrails(parse_policy({"checks": [{"type": "json_output", "action": "deny"}]}))
    good = guardrails.output_stream(response_format={"type": "json_object"})
    assert good.feed('{"a": ') == "" and good.feed("1}") == ""
    assert good.finish() == '{"a": 1}' and not good.denied
    bad = guardrails.output_stream(response_format={"type": "json_object"})
    bad.feed("Sure: ")
    assert bad.finish() == "" and bad.denied


def test_a_json_deny_holds_nothing_back_when_the_request_asked_for_no_json():
    guardrails = Guardrails(parse_policy({"checks": [{"type": "json_output", "action": "deny"}]}))
    for response_format in (None, {"type": "text"}):
        stream = guardrails.output_stream(response_format=response_format)
        assert stream.feed("Plain ") == "Plain " and stream.feed("text.") == "text."
        assert stream.finish() == "" and not stream.denied


def test_flag_and_allow_let_text_through_and_report_at_the_end():
    guardrails = Guardrails(parse_policy({"checks": [{"type": "pii", "action": "flag"}]}))
    output, stream = streamed(guardrails, "mail jane@example.com now", [7, 12])
    assert output == "mail jane@example.com now"
    assert stream.verdict.action_counts() == [("pii", "flag")]
