"""``suffix`` on completions: a model whose vocabulary has fill-in-the-middle tokens gets the prompt as
``<fim_prefix> prompt <fim_suffix> suffix <fim_middle>`` (a real `corral serve` over a small random-weight model
with those tokens); the default model, which has none, answers 400 naming ``suffix`` (test_request_fields.py)."""

from __future__ import annotations

import json
import shutil

import httpx
import tokenizers
import torch
from safetensors.torch import load_file, save_file

FIM = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]


def test_a_suffix_wraps_the_prompt_in_the_models_fim_tokens(tiny_model_dir, tmp_path, corral_serve):
    shutil.copytree(tiny_model_dir, tmp_path, dirs_exist_ok=True)
    rust = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    rust.add_special_tokens(FIM)
    rust.save(str(tmp_path / "tokenizer.json"))
    fim_ids = [rust.token_to_id(t) for t in FIM]
    # room in the (tied) embedding for the added tokens
    config = json.loads((tmp_path / "config.json").read_text())
    weights = load_file(str(tmp_path / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    weights["model.embed_tokens.weight"] = torch.cat([embed, torch.randn(8, embed.shape[1]) * 0.02])
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 8}))

    base = corral_serve("--model", str(tmp_path), "--max-model-len", "256", "--kv-cache-memory", str(16 * 1024**2))
    model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
    prompt, suffix = "def add(a, b):\n", "\n    return total\n"
    body = {"model": model, "prompt": prompt, "suffix": suffix, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 0}
    answer = httpx.post(base + "/v1/completions", json=body, timeout=60).json()
    expected = [fim_ids[0], *rust.encode(prompt, add_special_tokens=False).ids, fim_ids[1],
                *rust.encode(suffix, add_special_tokens=False).ids, fim_ids[2]]
    assert answer["usage"]["prompt_tokens"] == len(expected)
    entries = answer["choices"][0]["prompt_logprobs"]  # with 0 alternatives, each holds just the prompt's token
    assert entries[0] is None and [int(next(iter(e))) for e in entries[1:]] == expected[1:]
