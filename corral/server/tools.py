"""Tool calling, the request side: OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` become the
prompt the model sees and, where a call is required, a grammar its output must follow.

Two formats, one wire shape (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, hermes's):
- a chat template that knows it (its source writes ``<tool_call>``: Qwen2.5, Hermes, ...) gets ``tools`` as a
  template variable and the conversation's tool messages as they are;
- any other template (the default model's) gets corral's generic scheme: the tools described in the system
  message, assistant calls written back as ``<tool_call>`` text, tool results as ``<tool_response>`` user turns,
  and ``auto`` constrained to a plain answer or calls, so that a small model's call is always well formed.
``required`` and a named function are constrained in both formats: every call is JSON that matches its function's
parameter schema. The output side (parsing, streaming deltas) is in ``server/tool_calls.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.server.errors import APIError

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
# JSON as llguidance writes it: no free whitespace (a small model can spin on it), unsupported keywords refused
# unless the function is not strict.
_JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True, "json_allow_general_unicode_escapes": True}


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


@dataclass(frozen=True)
class ToolRequest:
    """What a request asks of tool calling: its functions, ``mode`` ("auto", "required", or the one function
    it must call) and whether one answer may hold several calls."""

    tools: tuple[ToolDefinition, ...]
    mode: str
    parallel: bool

    @property
    def callable(self) -> tuple[FunctionDefinition, ...]:
        functions = tuple(t.function for t in self.tools)
        if self.mode in ("auto", "required"):
            return functions
        return tuple(f for f in functions if f.name == self.mode)


def tool_request_of(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> ToolRequest | None:
    """The request's tool calling, validated (a 400 naming the field), or None when it makes no call."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise APIError(400, "parallel_tool_calls must be true or false", param="parallel_tool_calls")
    if not tools:
        if tool_choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise APIError(400, "tools must be a list of {\"type\": \"function\", \"function\": {...}}", param="tools")
    try:
        definitions = tuple(ToolDefinition.model_validate(t) for t in tools)
    except ValidationError as error:
        detail = error.errors()[0]
        where = ".".join(str(p) for p in detail["loc"])
        raise APIError(400, f"tools: {where}: {detail['msg']}", param="tools") from None
    names = [t.function.name for t in definitions]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: function names must be unique", param="tools")
    mode = _mode(tool_choice, names)
    if mode is None:
        return None
    return ToolRequest(definitions, mode, parallel=parallel_tool_calls is not False)


def _mode(tool_choice: Any, names: list[str]) -> str | None:
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice == "none":
        return None
    if tool_choice == "required":
        return "required"
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise APIError(400, f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
        return name
    raise APIError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                   '{"name": ...}}', param="tool_choice")


def template_knows_tools(chat_template: str | None) -> bool:
    """Whether the model's own template renders tools and calls in the hermes format."""
    return bool(chat_template) and TOOL_CALL_OPEN in chat_template and "tools" in chat_template


def prompt_messages(
    messages: list[dict[str, Any]], tools: ToolRequest | None, native: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages, extra template variables) for the chat template, in the format chosen (see the module doc)."""
    if native:
        return [_native_message(m) for m in messages], ({"tools": [t.model_dump(exclude_none=True) for t in tools.tools]}
                                                        if tools else {})
    messages = [_generic_message(m) for m in messages]
    if tools is not None:
        instructions = _instructions(tools)
        if messages[0].get("role") == "system":
            messages[0] = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{instructions}".lstrip()}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    return messages, {}


def tool_call_grammar(tools: ToolRequest, native: bool) -> str | None:
    """A Lark grammar (llguidance's dialect, with ``%json`` for each call) for the output, or None where the
    output stays free (``auto`` with a template that knows tools: the model was trained for it)."""
    if native and tools.mode == "auto":
        return None
    call = " | ".join(f"call_{i}" for i in range(len(tools.callable)))
    newline = '"\\n"' if native else ""
    block = f'"{TOOL_CALL_OPEN}" {newline} ({call}) {newline} "{TOOL_CALL_CLOSE}"'
    calls = f"({block})+" if tools.parallel else block
    lines = [f"calls: {calls}"]
    if tools.mode == "auto":  # a plain answer never opens with "<", so it cannot be a call gone wrong
        lines += ["start: calls | text", r"text: /[^<](.|\n)*/"]
    else:
        lines.insert(0, "start: calls")
    for i, function in enumerate(tools.callable):
        lines.append(f"call_{i}: %json {json.dumps(_call_schema(function))}")
    return "\n".join(lines) + "\n"


def _call_schema(function: FunctionDefinition) -> dict[str, Any]:
    parameters = function.parameters or {"type": "object", "properties": {}}
    return {
        "x-guidance": {**_JSON_OPTIONS, "lenient": function.strict is False},
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _instructions(tools: ToolRequest) -> str:
    described = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in tools.tools)
    if tools.mode == "auto":
        task = "Call one of these functions when it helps to answer; otherwise answer in plain text."
    elif tools.mode == "required":
        task = "Answer by calling one of these functions."
    else:
        task = f"Answer by calling the function {tools.mode}."
    return (
        f"You have these functions:\n<tools>\n{described}\n</tools>\n{task} To call a function, write "
        f'{TOOL_CALL_OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{TOOL_CALL_CLOSE}.'
    )


def _generic_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message of the tool protocol as plain text any template renders."""
    role, content = message.get("role"), message.get("content")
    if role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{content or ''}\n</tool_response>"}
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        written = "".join(
            f'{TOOL_CALL_OPEN}{{"name": {json.dumps(c["function"]["name"])}, '
            f'"arguments": {_arguments_text(c["function"].get("arguments"))}}}{TOOL_CALL_CLOSE}'
            for c in _checked_calls(calls)
        )
        return {"role": "assistant", "content": (content or "") + written}
    return {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")} | {"content": content or ""}


def _native_message(message: dict[str, Any]) -> dict[str, Any]:
    """Hermes templates write ``arguments`` with ``tojson``: give them the object, not its JSON text."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    parsed = [
        {**c, "function": {**c["function"], "arguments": json.loads(_arguments_text(c["function"].get("arguments")))}}
        for c in _checked_calls(calls)
    ]
    return {**message, "tool_calls": parsed}


def _checked_calls(calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or not all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
        for c in calls
    ):
        raise APIError(400, "messages: tool_calls must be a list of {\"id\", \"type\": \"function\", \"function\": "
                       "{\"name\", \"arguments\"}}", param="messages")
    return calls


def _arguments_text(arguments: Any) -> str:
    """A call's arguments as JSON text (OpenAI sends a string; some clients an object)."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except json.JSONDecodeError:
            raise APIError(400, "messages: a tool call's arguments must be JSON", param="messages") from None
        return arguments
    return json.dumps(arguments)
