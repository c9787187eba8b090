"""Structured output over HTTP: OpenAI's ``response_format`` and vLLM's ``structured_outputs`` / ``guided_*``
extras become one ``StructuredOutputsParams``, compiled on a worker thread before the request reaches the
engine, so a slow schema never holds up a step and a bad one is a 400 naming its field."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from corral.errors import GrammarError, InvalidSamplingParamsError
from corral.sample.params import StructuredOutputsParams
from corral.server.async_engine import AsyncEngine
from corral.server.errors import APIError
from corral.structured.backend import CompiledGrammar

GRAMMAR_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                  "guided_grammar")
BACKEND_FIELD = "guided_decoding_backend"
BACKENDS = (None, "auto", "llguidance")
COMPILE_TIMEOUT_S = 10.0
_STRUCTURED_OUTPUTS_KEYS = {"json", "json_object", "regex", "choice", "grammar"}
# Compiles get threads of their own: one that outlives its timeout keeps its thread, and a burst of those must
# not take the default pool that tokenizes every request's prompt.
_COMPILER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-compile")


def structured_outputs_of(fields: dict[str, Any]) -> tuple[str, StructuredOutputsParams] | None:
    """(the field it came from, the spec) of a request's extra fields, or None when it asks for free text."""
    if fields.get(BACKEND_FIELD) not in BACKENDS:
        raise APIError(400, f"{BACKEND_FIELD} must be one of auto, llguidance", param=BACKEND_FIELD)
    given = {name: fields[name] for name in GRAMMAR_FIELDS if fields.get(name) is not None}
    if isinstance(given.get("response_format"), dict) and given["response_format"].get("type") == "text":
        del given["response_format"]
    if len(given) > 1:
        raise APIError(400, f"give at most one of {', '.join(given)}", param=sorted(given)[1])
    if not given:
        return None
    (name, value), = given.items()
    try:
        return name, _spec(name, value)
    except (InvalidSamplingParamsError, TypeError, ValueError) as error:
        raise APIError(400, f"{name}: {error}", param=name) from None


async def compile_off_thread(engine: AsyncEngine, field: str, spec: StructuredOutputsParams) -> CompiledGrammar:
    """Compile ``spec`` through the engine's grammar cache on a worker thread, for the request to carry to the
    engine (so the engine thread never compiles, even if the cache has evicted it by then); a 400 naming ``field``
    if it is invalid or takes longer than COMPILE_TIMEOUT_S (its compile then finishes in the background, cached
    for a retry)."""
    grammars = engine.engine.grammars
    if grammars is None:
        raise APIError(400, "structured output needs the llguidance package, which is not installed", param=field)
    try:
        compiling = asyncio.get_running_loop().run_in_executor(_COMPILER, grammars.compile, spec)
        return await asyncio.wait_for(asyncio.shield(compiling), COMPILE_TIMEOUT_S)
    except TimeoutError:
        raise APIError(400, f"{field}: the grammar took longer than {COMPILE_TIMEOUT_S:.0f} s to compile",
                       param=field) from None
    except GrammarError as error:
        raise APIError(400, f"{field}: {error}", param=field) from None


def _spec(name: str, value: Any) -> StructuredOutputsParams:
    if name == "response_format":
        return _response_format(value)
    if name == "structured_outputs":
        if not isinstance(value, dict):
            raise TypeError("must be an object")
        unknown = set(value) - _STRUCTURED_OUTPUTS_KEYS
        if unknown:
            raise ValueError(f"unsupported key {sorted(unknown)[0]!r} (supported: {', '.join(sorted(_STRUCTURED_OUTPUTS_KEYS))})")
        given = {k: v for k, v in value.items() if v is not None and v is not False}
        if "json" in given:
            given["json"] = _schema_text(given["json"])
        return StructuredOutputsParams(**given)
    if name == "guided_json":
        return StructuredOutputsParams(json=_schema_text(value))
    if name == "guided_choice":
        if not isinstance(value, list):
            raise TypeError("must be a list of strings")
        return StructuredOutputsParams(choice=tuple(value))
    return StructuredOutputsParams(**{name.removeprefix("guided_"): value})


def _response_format(value: Any) -> StructuredOutputsParams:
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise ValueError("type must be one of text, json_object, json_schema")
    if value["type"] == "json_object":
        return StructuredOutputsParams(json_object=True)
    json_schema = value.get("json_schema")
    if not isinstance(json_schema, dict) or not isinstance(json_schema.get("schema"), dict):
        raise ValueError("json_schema needs a schema object: {\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    strict = json_schema.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ValueError("json_schema.strict must be true or false")
    return StructuredOutputsParams(json=_schema_text(json_schema["schema"]), strict=strict is not False)


def _schema_text(schema: Any) -> str:
    """A schema as compact JSON text, so equal schemas share one compiled grammar (keys keep their order: the
    output's properties follow it)."""
    if isinstance(schema, str):
        schema = json.loads(schema)
    if not isinstance(schema, dict):
        raise TypeError("a JSON Schema must be an object")
    return json.dumps(schema, separators=(",", ":"))
