"""corral.text.chat_template: same rendering as transformers, sandboxed, clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import ChatTemplateError
from corral.text.chat_template import render_chat_template
from corral.text.tokenizer import Tokenizer

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    [{"role": "user", "content": "Unicode: 日本語 😀 naïve\nand a second line\n"}],
    [{"role": "user", "content": "It contains <|im_end|> and {{ braces }} and {% tags %}"}],
    [{"role": "user", "content": ""}],
]

# Exercises the environment's extras: loop controls, namespace, tojson (unescaped, with options),
# raise_exception, bos/eos variables and {% generation %}.
RICH_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}"
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "{% if m['role'] == 'system' %}{% continue %}{% endif %}"
    "{% set ns.n = ns.n + 1 %}"
    "[{{ ns.n }}] {{ m['role'] }}: {{ m['content'] | tojson }} {{ m | tojson(indent=1, sort_keys=True) }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_default_template_matches_transformers(
    smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any, conversation: list[dict[str, str]]
) -> None:
    expected = hf_smollm2_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )
    assert smollm2_tokenizer.apply_chat_template(conversation) == expected
    expected = hf_smollm2_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=False
    )
    assert smollm2_tokenizer.apply_chat_template(conversation, add_generation_prompt=False) == expected


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_rich_template_matches_transformers(
    smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any, conversation: list[dict[str, str]]
) -> None:
    expected = hf_smollm2_tokenizer.apply_chat_template(
        conversation, chat_template=RICH_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert smollm2_tokenizer.apply_chat_template(conversation, chat_template=RICH_TEMPLATE) == expected
    assert "\\u" not in expected and "&#" not in expected  # tojson leaves non-ASCII and HTML alone


def test_trim_and_lstrip_blocks() -> None:
    template = "{% for m in messages %}\n    {% if true %}\n{{ m['content'] }}\n    {% endif %}\n{% endfor %}"
    assert render_chat_template(template, [{"content": "a"}, {"content": "b"}]) == "a\nb\n"


def test_raise_exception_becomes_chat_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="bad role tool"):
        render_chat_template(RICH_TEMPLATE, [{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("template", [None, ""])
def test_missing_template(template: str | None) -> None:
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat_template(template, [{"role": "user", "content": "hi"}])


def test_syntax_error() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for m in messages %}", [])


def test_runtime_error_is_wrapped() -> None:
    with pytest.raises(ChatTemplateError, match="TypeError|unsupported"):
        render_chat_template("{{ messages[0]['content'] + 1 }}", [{"content": "a"}])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ raise_exception.__globals__['os'] }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{{ messages[0].update({'content': 'changed'}) }}",
        "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    ],
)
def test_sandbox_blocks_unsafe_access(template: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="unsafe|undefined"):
        render_chat_template(template, messages)
    assert messages == [{"role": "user", "content": "hi"}]


def test_strftime_now_and_extra_variables() -> None:
    rendered = render_chat_template("{{ strftime_now('%Y') }}|{{ tools | length }}", [], tools=[{"a": 1}])
    year, num_tools = rendered.split("|")
    assert len(year) == 4 and year.isdigit() and num_tools == "1"


def test_compiled_templates_are_cached() -> None:
    from corral.text import chat_template

    template = "{{ messages | length }} cached"
    render_chat_template(template, [])
    before = chat_template._compile.cache_info().hits
    assert render_chat_template(template, [{}]) == "1 cached"
    assert chat_template._compile.cache_info().hits == before + 1
