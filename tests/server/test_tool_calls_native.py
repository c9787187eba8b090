"""Tool calling with a chat template that knows tools (the hermes format): a real `corral serve` over a small
random-weight model whose template renders ``tools`` answers ``required`` with a call in the template's own
framing (``<tool_call>`` and its JSON on lines of their own), parsed into ``tool_calls``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import openai

from .test_tools import HERMES_TEMPLATE

# Bounded arguments: a random-weight model at temperature 1 would write integers of any length.
PICK = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"colour": {"enum": ["red", "green"]}, "ok": {"type": "boolean"}},
    "required": ["colour", "ok"], "additionalProperties": False}}}


def test_a_hermes_template_model_answers_required_with_a_parsed_call(tiny_model_dir, tmp_path, corral_serve):
    model = tmp_path / "hermes-tiny"
    shutil.copytree(tiny_model_dir, model)
    (Path(model) / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    base = corral_serve("--model", str(model), "--max-model-len", "512", "--kv-cache-memory", str(32 * 1024**2))
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    name = client.models.list().data[0].id
    for seed in range(3):
        response = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "2 + 3?"}], tools=[PICK], tool_choice="required",
            max_tokens=200, temperature=1.0, seed=seed, parallel_tool_calls=False, logprobs=True,
        )
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        assert call.function.name == "pick"
        jsonschema.validate(json.loads(call.function.arguments), PICK["function"]["parameters"])
        generated = "".join(t.token for t in choice.logprobs.content)
        assert generated.startswith("<tool_call>\n{") and generated.rstrip().endswith("}\n</tool_call>")
