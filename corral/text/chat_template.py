"""Render a model's chat template (Jinja2) in a sandbox, the way transformers does.

Chat templates ship with model files and are untrusted code, so they run in jinja2's
``ImmutableSandboxedEnvironment``: no access to underscore attributes, no mutating lists or dicts
the caller passed in. The environment mirrors transformers' (``trim_blocks``, ``lstrip_blocks``,
loop controls, ``raise_exception``, a ``tojson`` that does not HTML-escape, ``strftime_now``) so
that a template renders to the same string here as in ``apply_chat_template(tokenize=False)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.errors import ChatTemplateError

_CACHE_SIZE = 16


def render_chat_template(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str:
    """Render ``template`` for ``messages``.

    Keyword arguments become template variables (``bos_token``, ``eos_token``, ``tools``, ...).
    Raises ``ChatTemplateError`` if the template is missing, does not compile, calls
    ``raise_exception`` or fails while rendering.
    """
    if not template:
        raise ChatTemplateError(
            "this model has no chat template; pass a prompt string instead of chat messages, or give a template"
        )
    compiled = _compile(template)
    # Copies, so the template never sees (or could keep) the caller's objects.
    conversation = [dict(message) for message in messages]
    try:
        return compiled.render(messages=conversation, add_generation_prompt=add_generation_prompt, **kwargs)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e
    except Exception as e:  # a template can raise anything (TypeError on bad message content, ...)
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e


@lru_cache(maxsize=_CACHE_SIZE)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile (line {e.lineno}): {e.message}") from e


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML, which would change the prompt.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask marker) and render
    its body unchanged: corral does not compute assistant masks."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()
