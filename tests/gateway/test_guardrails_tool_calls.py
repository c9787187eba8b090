"""The output checks on tool calls' arguments and on n > 1 streams, end to end: a real gateway in front of the
recording upstream (recording_upstream.py), which answers tool calls (their arguments streamed in fragments
cut where the test chooses, as OpenAI streams them) and interleaves the events of several choices."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.gateway.audit import text_sha256
from corral.gateway.audit_chain import audit_files

from .recording_upstream import Choice, RecordingUpstream, ToolCall, recording_upstream
from .test_guardrails_gateway import ACTIONS, AUDIT_KEY, chat, config, streamed_payloads

POLICY = {"checks": [{"type": "secrets", "action": "mask"}, {"type": "pii", "action": "mask"}]}
MESSAGES = {"messages": [{"role": "user", "content": "mail the report"}]}
# Arguments as a model writes them: an e-mail after an escaped line break, a card number as a JSON number.
ARGUMENTS = ('{"to": "jane.doe@example.com", "body": "Hi,\\nbob@example.org has the key sk-proj-Xq3ZpV8kLmN2wRt7YbHc4Jd9",'
             ' "card": 4111111111111111, "cc": []}')
MASKED = {"to": "[EMAIL]", "body": "Hi,\n[EMAIL] has the key [API_KEY]", "card": "[CREDIT_CARD]", "cc": []}
SECRETS = ("jane", "bob@", "example", "Xq3ZpV8", "4111")


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as recording:
        yield recording


def cut(text: str, *at: int) -> list[str]:
    bounds = [0, *at, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def events(payloads: list[str]) -> list[dict]:
    return [json.loads(payload) for payload in payloads if payload != "[DONE]"]


def streamed_arguments(payloads: list[str], choice: int = 0) -> dict[int, str]:
    """Each tool call's arguments, joined from the stream's fragments, by tool call index."""
    arguments: dict[int, str] = {}
    deltas = [each.get("delta") or {} for event in events(payloads) for each in event.get("choices") or ()
              if each["index"] == choice]
    for call in (call for delta in deltas for call in delta.get("tool_calls") or ()):
        fragment = (call.get("function") or {}).get("arguments") or ""
        arguments[call["index"]] = arguments.get(call["index"], "") + fragment
    return arguments


def streamed_content(payloads: list[str], choice: int) -> str:
    return "".join((each.get("delta") or {}).get("content") or "" for event in events(payloads)
                   for each in event.get("choices") or () if each["index"] == choice)


def test_a_body_answers_tool_call_arguments_masked_and_still_json(upstream, run_gateway):
    gw = run_gateway(config(upstream.base_url, POLICY))
    upstream.answer_choices(Choice(tool_calls=[ToolCall("send_mail", [ARGUMENTS]),
                                               ToolCall("lookup", ['{"ip": "8.8.4.4"}'], id="call_2")]))
    answer = chat(gw, "mail the report")
    assert answer.status_code == 200, answer.text
    message = answer.json()["choices"][0]["message"]
    assert message["content"] is None and [call["id"] for call in message["tool_calls"]] == ["call_1", "call_2"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == MASKED
    assert json.loads(message["tool_calls"][1]["function"]["arguments"]) == {"ip": "[IP_ADDRESS]"}
    assert not any(secret in answer.text for secret in SECRETS)
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert gw.metric(ACTIONS, check="pii", action="mask") == 1  # once for the choice, whatever masked it
    assert gw.metric(ACTIONS, check="secrets", action="mask") == 1


@pytest.mark.parametrize("finish", [True, False], ids=["finish_reason", "no_finish_reason"])
def test_tool_call_arguments_split_across_fragments_never_reach_the_client(upstream, run_gateway, finish):
    gw = run_gateway(config(upstream.base_url, POLICY))
    # Cut inside the e-mail addresses, inside "\n", inside the key and inside the card number.
    fragments = cut(ARGUMENTS, 1, 12, 20, 45, 46, 50, 62, 85, 97, 120, 126)
    upstream.answer_choices(Choice(tool_calls=[ToolCall("send_mail", fragments)]), finish=finish)
    payloads = streamed_payloads(gw, "/v1/chat/completions", MESSAGES)
    assert payloads[-1] == "[DONE]"
    for secret in SECRETS:
        assert not any(secret in payload for payload in payloads), (secret, payloads)
    arguments = streamed_arguments(payloads)
    assert list(arguments) == [0] and json.loads(arguments[0]) == MASKED
    first = events(payloads)[1]["choices"][0]["delta"]["tool_calls"][0]  # after the role delta
    assert (first["id"], first["type"], first["function"]["name"]) == ("call_1", "function", "send_mail")
    assert events(payloads)[-1]["choices"][0]["finish_reason"] == ("tool_calls" if finish else None)
    assert gw.metric(ACTIONS, check="pii", action="mask") == 1


def test_a_secret_in_tool_call_arguments_is_denied_midway(upstream, run_gateway):
    gw = run_gateway(config(upstream.base_url, {"checks": [{"type": "secrets", "action": "deny"}]}))
    upstream.answer_choices(Choice(tool_calls=[ToolCall("deploy", ['{"token": "sk-proj-Xq3', 'ZpV8kLmN2wRt7YbHc4Jd9"',
                                                                   ', "after": "more"}'])]))
    payloads = streamed_payloads(gw, "/v1/chat/completions", MESSAGES)
    assert payloads[-1] == "[DONE]" and json.loads(payloads[-2])["error"]["code"] == "content_policy"
    assert "Xq3" not in "".join(payloads) and "after" not in "".join(payloads)
    assert gw.metric(ACTIONS, check="secrets", action="deny") == 1
    upstream.answer_choices(Choice(tool_calls=[ToolCall("deploy", ['{"token": "AKIA2E0A8F3B244C9986"}'])]))
    refused = chat(gw, "deploy")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "content_policy"
    assert "AKIA" not in refused.text


def test_flag_counts_tool_call_arguments_and_the_audit_names_the_tool_call(upstream, run_gateway, tmp_path):
    gw = run_gateway(config(upstream.base_url, {"checks": [{"type": "pii", "action": "flag"}]},
                            audit={"enabled": True, "directory": str(tmp_path)}), audit_key=AUDIT_KEY.encode())
    upstream.answer_choices(Choice(["Sending."], [ToolCall("send_mail", cut('{"to": "jane@example.com"}', 13))]))
    payloads = streamed_payloads(gw, "/v1/chat/completions", MESSAGES)
    assert json.loads(streamed_arguments(payloads)[0]) == {"to": "jane@example.com"}  # flag lets it through
    assert gw.metric(ACTIONS, check="pii", action="flag") == 1
    gw.stop()
    records = [json.loads(line) for path in audit_files(Path(tmp_path)) for line in path.read_bytes().splitlines()]
    [record] = [record for record in records if record["type"] == "request"]
    output = record["guardrails"]["output"]
    assert [(r["action"], r["choice"], r.get("tool_call")) for r in output] == [(None, 0, None), ("flag", 0, 0)]
    assert output[1]["kinds"] == {"email": 1} and "example" not in json.dumps(output)


def test_n_2_streams_mask_each_choice_on_its_own(upstream, run_gateway):
    gw = run_gateway(config(upstream.base_url, POLICY))
    # Choice 1's e-mail is split across its events while choice 0's events come in between; choice 0 ends with
    # text that could begin an address, which must not be joined to choice 1's text.
    upstream.answer_choices(Choice(["Fine, write to ", "ops", "@exam"]),
                            Choice(["Reach jane.d", "oe@exam", "ple.com or ", "call +1 415", " 555 0132"],
                                   [ToolCall("notify", cut('{"to": "bob@example.org"}', 10, 16))]))
    payloads = streamed_payloads(gw, "/v1/chat/completions", {**MESSAGES, "n": 2})
    indexes = [event["choices"][0]["index"] for event in events(payloads) if event.get("choices")]
    assert indexes[:4] == [0, 1, 0, 1]  # interleaved as they came
    assert streamed_content(payloads, 0) == "Fine, write to ops@exam"
    assert streamed_content(payloads, 1) == "Reach [EMAIL] or call [PHONE]"
    assert json.loads(streamed_arguments(payloads, 1)[0]) == {"to": "[EMAIL]"} and streamed_arguments(payloads, 0) == {}
    for secret in ("jane", "ple.com", "415", "bob"):
        assert not any(secret in payload for payload in payloads), (secret, payloads)
    finishes = {each["index"]: each["finish_reason"] for event in events(payloads) for each in event["choices"]
                if each.get("finish_reason")}
    assert finishes == {0: "stop", 1: "tool_calls"}
    assert gw.metric(ACTIONS, check="pii", action="mask") == 1  # choice 1 only


def test_n_2_body_answers_are_masked_per_choice(upstream, run_gateway):
    gw = run_gateway(config(upstream.base_url, POLICY))
    upstream.answer_choices(Choice(["no entity here"]), Choice(["mail jane@example.com"]))
    choices = chat(gw, "hi", n=2).json()["choices"]
    assert [choice["message"]["content"] for choice in choices] == ["no entity here", "mail [EMAIL]"]
    response = httpx.post(gw.base_url + "/v1/completions", timeout=30, json={"model": "m", "prompt": "hi", "n": 2})
    assert [choice["text"] for choice in response.json()["choices"]] == ["no entity here", "mail [EMAIL]"]


def streamed_function_call(payloads: list[str]) -> tuple[list[str], str]:
    """The legacy ``delta.function_call``: the names it carried, and its arguments joined."""
    calls = [(each.get("delta") or {}).get("function_call") for event in events(payloads)
             for each in event.get("choices") or ()]
    calls = [call for call in calls if call]
    return [call["name"] for call in calls if "name" in call], "".join(call.get("arguments") or "" for call in calls)


def test_the_legacy_function_call_is_masked_whole_and_streamed(upstream, run_gateway, tmp_path):
    gw = run_gateway(config(upstream.base_url, POLICY, audit={"enabled": True, "directory": str(tmp_path)}),
                     audit_key=AUDIT_KEY.encode())
    upstream.answer_choices(Choice(function_call=ToolCall("send_mail", [ARGUMENTS])))
    answer = chat(gw, "mail the report")
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "function_call" and choice["message"]["function_call"]["name"] == "send_mail"
    assert json.loads(choice["message"]["function_call"]["arguments"]) == MASKED
    assert not any(secret in answer.text for secret in SECRETS)
    # Streamed, cut inside the addresses, the escape, the key and the card number.
    fragments = cut(ARGUMENTS, 1, 12, 20, 45, 46, 50, 62, 85, 97, 120, 126)
    upstream.answer_choices(Choice(function_call=ToolCall("send_mail", fragments)))
    payloads = streamed_payloads(gw, "/v1/chat/completions", MESSAGES)
    for secret in SECRETS:
        assert not any(secret in payload for payload in payloads), (secret, payloads)
    names, arguments = streamed_function_call(payloads)
    assert names == ["send_mail"] and json.loads(arguments) == MASKED
    assert events(payloads)[-1]["choices"][0]["finish_reason"] == "function_call"
    assert gw.metric(ACTIONS, check="pii", action="mask") == 2 and gw.metric(ACTIONS, check="secrets") == 2
    gw.stop()
    records = [json.loads(line) for path in audit_files(Path(tmp_path)) for line in path.read_bytes().splitlines()]
    requests = [record for record in records if record["type"] == "request"]
    assert len(requests) == 2
    for record, sent in zip(requests, (choice["message"]["function_call"]["arguments"], arguments)):
        called = [(r["check"], r["action"]) for r in record["guardrails"]["output"] if r.get("function_call")]
        assert called == [("secrets", "mask"), ("pii", "mask")] and "example" not in json.dumps(record)
        # The output hashed is the call the client got.
        assert record["output_sha256"] == text_sha256({"content": "", "function_call": {"name": "send_mail",
                                                                                         "arguments": sent}})
