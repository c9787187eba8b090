"""The structured output check: JSON for json_object, and valid for the schema for json_schema."""

from __future__ import annotations

import pytest

from corral.gateway.guardrails.json_output import check_json_output

SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"], "additionalProperties": False}}}


@pytest.mark.parametrize("response_format", [None, {"type": "text"}, {"type": "regex", "pattern": "x"}])
def test_a_request_that_asked_for_no_json_is_not_checked(response_format):
    verdict = check_json_output("plain text", response_format)
    assert not verdict.applicable and verdict.valid


@pytest.mark.parametrize(("text", "error"), [
    ('{"a": 1}', None), ("[1, 2]", "a JSON object was asked for, got list"),
    ('Here: {"a": 1}', "not valid JSON: Expecting value at line 1 column 1"), ('{"a": ', "not valid JSON"),
])
def test_json_object(text, error):
    verdict = check_json_output(text, {"type": "json_object"})
    assert verdict.valid is (error is None)
    assert (verdict.error or "").startswith(error or "")


@pytest.mark.parametrize(("text", "error"), [
    ('{"name": "Ada", "age": 36}', None),
    ('{"name": "Ada", "age": "36"}', "age: '36' is not of type 'integer'"),
    ('{"name": "Ada", "age": -1}', "age: -1 is less than the minimum of 0"),
    ('{"name": "Ada"}', "(root): 'age' is a required property"),
    ('{"name": "Ada", "age": 1, "x": 2}', "(root): Additional properties are not allowed"),
])
def test_json_schema_names_the_first_violation_and_its_path(text, error):
    verdict = check_json_output(text, SCHEMA)
    assert verdict.applicable and verdict.valid is (error is None)
    assert (verdict.error or "").startswith(error or "")


def test_an_invalid_schema_is_reported_not_held_against_the_answer():
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    verdict = check_json_output('{"a": 1}', bad)
    assert verdict.valid and verdict.error.startswith("schema not checked: invalid schema")
