"""Structured output check (OWASP LLM05, improper output handling): the answer to a request that asked for
``response_format`` ``json_object`` or ``json_schema`` is valid JSON (an object), valid for the schema.

The schema is checked with ``jsonschema`` (the draft the schema names, 2020-12 by default), imported on first
use: it costs about 150 ms to import and only requests with a schema need it. Validators are cached by schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_MAX_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class JsonVerdict:
    """``applicable``: the request asked for JSON; ``valid``: the answer is what it asked for; ``error``: why
    not (a JSON parse error, or the first schema violation with its path)."""

    applicable: bool
    valid: bool
    error: str | None = None


NOT_APPLICABLE = JsonVerdict(applicable=False, valid=True)


def asks_for_json(response_format: dict[str, Any] | None) -> bool:
    return (response_format or {}).get("type") in ("json_object", "json_schema")


def check_json_output(text: str, response_format: dict[str, Any] | None) -> JsonVerdict:
    if not asks_for_json(response_format):
        return NOT_APPLICABLE
    kind = response_format["type"]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return JsonVerdict(True, False, f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}")
    if kind == "json_object":
        if not isinstance(document, dict):
            return JsonVerdict(True, False, f"a JSON object was asked for, got {type(document).__name__}")
        return JsonVerdict(True, True)
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return JsonVerdict(True, True, "no schema in response_format.json_schema: checked as JSON only")
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except ValueError as error:
        # The replica would have refused a bad schema; the gateway reports it and does not judge the answer.
        return JsonVerdict(True, True, f"schema not checked: {error}")
    from jsonschema.exceptions import best_match

    problem = best_match(validator.iter_errors(document))
    if problem is None:
        return JsonVerdict(True, True)
    where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
    return JsonVerdict(True, False, f"{where}: {problem.message}"[:_MAX_MESSAGE_CHARS])


@lru_cache(maxsize=256)
def _validator(schema_json: str):
    import jsonschema
    from jsonschema.exceptions import SchemaError

    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"invalid schema: {error.message}"[:_MAX_MESSAGE_CHARS]) from None
    return validator_class(schema)
