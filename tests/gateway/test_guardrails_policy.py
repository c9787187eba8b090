"""The policy model: strict, every mistake one line naming its key."""

from __future__ import annotations

import pytest

from corral.gateway.guardrails.policy import GuardrailConfigError, PiiCheck, parse_policy


def test_a_full_policy_parses_with_defaults():
    policy = parse_policy({"checks": [{"type": "secrets", "action": "deny"}, {"type": "pii"},
                                      {"type": "injection"}, {"type": "leakage"}, {"type": "json_output"}],
                           "patterns": [{"name": "employee_id", "regex": r"EMP-\d{6}", "context_words": ["employee"]}]})
    pii = policy.checks[1]
    assert isinstance(pii, PiiCheck) and pii.action == "mask" and pii.stages == ["input", "output"]
    assert policy.checks[2].action == "deny" and policy.checks[3].min_words == 10
    names = {pattern.name for pattern in policy.entity_patterns(pii)}
    assert {"email", "iban", "employee_id"} <= names and "aws_access_key_id" not in names
    assert "aws_access_key_id" in {pattern.name for pattern in policy.entity_patterns(policy.checks[0])}


def test_entities_select_by_kind_or_pattern_name():
    policy = parse_policy({"checks": [{"type": "pii", "entities": ["phone", "ipv4"]}]})
    assert {p.name for p in policy.entity_patterns(policy.checks[0])} == {
        "phone_international", "phone_nanp", "phone_national", "ipv4"}


@pytest.mark.parametrize(("data", "message"), [
    ({"checks": [{"type": "pii", "actoin": "mask"}]}, "guardrails: checks.0.actoin: unknown key"),
    ({"chekcs": []}, "guardrails: chekcs: unknown key"),
    ({"checks": [{"type": "pii", "action": "redact"}]}, "guardrails: checks.0.action: Input should be"),
    ({"checks": [{"type": "injection", "action": "mask"}]}, "guardrails: checks.0.action: Input should be"),
    ({"checks": [{"type": "json_output", "action": "mask"}]}, "guardrails: checks.0.action: Input should be"),
    ({"checks": [{"type": "virus_scan"}]}, "guardrails: checks.0: Input tag 'virus_scan'"),
    ({"checks": [{"type": "pii"}, {"type": "pii"}]}, "checks.1.name: two checks are named 'pii'"),
    ({"checks": [{"type": "pii", "entities": ["emial"]}]}, "checks.0.entities: no entity named 'emial'"),
    ({"checks": [{"type": "leakage", "min_words": 2}]}, "checks.0.min_words: Input should be greater than or equal to 3"),
    ({"patterns": [{"name": "emp", "regex": r"EMP-\d+"}]}, "patterns.0: regex 'EMP-\\\\d+': the regex must bound"),
    ({"patterns": [{"name": "emp", "regex": r"EMP-(\d{6}"}]}, "patterns.0: regex 'EMP-(\\\\d{6}': not a valid regex"),
    ({"patterns": [{"name": "emp", "regex": r"EMP-\d{6}", "validator": "nope"}]}, "unknown validator 'nope'"),
    ({"patterns": [{"name": "email", "regex": r"EMP-\d{6}"}]}, "patterns.0.name: 'email' is a built-in pattern"),
    ({"patterns": [{"name": "Emp", "regex": r"EMP-\d{6}"}]}, "patterns.0.name: String should match pattern"),
    ({"checks": [{"type": "injection", "classifier": "no.such.module:f"}]}, "checks.0: 'no.such.module:f': cannot load"),
    ({"checks": [{"type": "injection", "disabled_rules": ["nope"]}]}, "checks.0: disabled_rules: no rule named 'nope'"),
    ([], "guardrails: expected a mapping"),
])
def test_a_mistake_is_one_line_naming_its_key(data, message):
    with pytest.raises(GuardrailConfigError) as raised:
        parse_policy(data)
    assert str(raised.value).startswith(message) or message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_two_checks_of_one_type_need_names():
    policy = parse_policy({"checks": [{"type": "pii", "name": "pii_in", "stages": ["input"], "action": "deny"},
                                      {"type": "pii", "name": "pii_out", "stages": ["output"]}]})
    assert [check.name for check in policy.checks] == ["pii_in", "pii_out"]
