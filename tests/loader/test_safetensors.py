"""HF checkpoint directories: round trips, config parsing and agreement with transformers and GGUF."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.loader.gguf import load_gguf
from corral.loader.gguf_writer import write_tiny_gguf
from corral.loader.safetensors import hf_config_dict, load_hf_dir, parse_hf_config, save_hf_dir
from corral.models.spec import RopeScaling

LLAMA3 = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


@pytest.mark.parametrize(
    ("architecture", "overrides"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "attention_bias": True, "eos_token_ids": (2, 5)}),
        ("llama", {"rope_scaling": LLAMA3, "head_dim": 32}),
        ("qwen2", {}),
    ],
)
def test_save_load_round_trip(tmp_path, tiny_config, random_weights, architecture, overrides):
    config = tiny_config(architecture, **overrides)
    weights = random_weights(config)
    save_hf_dir(str(tmp_path), config, weights)

    loaded_config, loaded = load_hf_dir(str(tmp_path), torch.float32)

    assert loaded_config == config
    assert loaded.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(loaded[name], tensor), name


def test_dtype_cast(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    save_hf_dir(str(tmp_path), config, random_weights(config))
    _, loaded = load_hf_dir(str(tmp_path), torch.bfloat16)
    assert {t.dtype for t in loaded.values()} == {torch.bfloat16}


def test_shards_and_stray_tensors(tmp_path, tiny_config, random_weights):
    config = tiny_config(tie_word_embeddings=True)
    weights = random_weights(config)
    save_hf_dir(str(tmp_path), config, weights)
    (tmp_path / "model.safetensors").unlink()
    names = sorted(weights)
    half = len(names) // 2
    save_file({n: weights[n] for n in names[:half]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    extras = {"lm_head.weight": weights["model.embed_tokens.weight"].clone()}  # tied checkpoints may store it
    extras["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(
        8
    )  # old checkpoints saved this buffer
    save_file(
        {**{n: weights[n] for n in names[half:]}, **extras},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )

    _, loaded = load_hf_dir(str(tmp_path))

    assert loaded.keys() == weights.keys()


def test_same_model_from_gguf_and_hf_dir(tmp_path, tiny_config, random_weights):
    config = tiny_config("llama", attention_bias=True, rope_scaling=LLAMA3)
    weights = random_weights(config)
    save_hf_dir(str(tmp_path / "hf"), config, weights)
    write_tiny_gguf(tmp_path / "m.gguf", config, weights)

    hf_config, from_hf = load_hf_dir(str(tmp_path / "hf"))
    gguf_config, from_gguf = load_gguf(str(tmp_path / "m.gguf"))

    assert hf_config == gguf_config
    for name in from_hf:
        assert torch.equal(from_hf[name], from_gguf[name]), name


def _base_raw(**overrides):
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    raw.update(overrides)
    return raw


def test_parse_transformers4_llama3_config():
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    rope["original_max_position_embeddings"] = 8192
    config = parse_hf_config(_base_raw(rope_theta=500000.0, rope_scaling=rope, eos_token_id=[128001, 128009]))
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert config.eos_token_ids == (128001, 128009)
    assert config.num_key_value_heads == 4
    assert config.max_position_embeddings == 2048  # HF's LlamaConfig default
    assert config.tie_word_embeddings is False


def test_parse_transformers5_rope_parameters():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0}
    rope.update(high_freq_factor=4.0, original_max_position_embeddings=8192)
    config = parse_hf_config(_base_raw(rope_parameters=rope, eos_token_id=2))
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == LLAMA3
    assert config.eos_token_ids == (2,)


def test_parse_legacy_type_key_and_default_rope():
    legacy = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    legacy["original_max_position_embeddings"] = 8192
    assert parse_hf_config(_base_raw(rope_scaling=legacy)).rope_scaling == LLAMA3
    default = {"rope_type": "default", "rope_theta": 1e6}
    parsed = parse_hf_config(_base_raw(rope_parameters=default))
    assert parsed.rope_scaling is None and parsed.rope_theta == 1e6


def test_qwen2_always_has_attention_bias():
    raw = _base_raw(model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_scaling=None)
    assert parse_hf_config(raw).attention_bias


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "mistral"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        ({"hidden_act": "gelu"}, "gelu"),
    ],
)
def test_unsupported_configs(overrides, match):
    with pytest.raises(UnsupportedModelError, match=match):
        parse_hf_config(_base_raw(**overrides))


def test_unsupported_model_type_in_dir(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(_base_raw(model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    )
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_hf_dir(str(tmp_path))


def test_bad_directories(tmp_path, tiny_config, random_weights):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_hf_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_hf_dir(str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps({k: v for k, v in _base_raw().items() if k != "vocab_size"})
    )
    with pytest.raises(ModelLoadError, match="vocab_size"):
        load_hf_dir(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(_base_raw()))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_hf_dir(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_hf_dir(str(tmp_path))


def test_missing_and_misshapen_weights(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    weights = random_weights(config)
    save_hf_dir(str(tmp_path), config, weights)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="missing.*up_proj"):
        load_hf_dir(str(tmp_path))
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="up_proj.*shape"):
        load_hf_dir(str(tmp_path))


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_transformers_reads_what_save_hf_dir_writes(tmp_path, tiny_config, random_weights, architecture):
    import transformers

    overrides = {"rope_scaling": LLAMA3, "tie_word_embeddings": True} if architecture == "llama" else {}
    config = tiny_config(architecture, max_position_embeddings=16384, **overrides)
    weights = random_weights(config)
    save_hf_dir(str(tmp_path), config, weights)

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)

    reference = model.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(reference[name], tensor), name
    hf = model.config
    assert (hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads) == (64, 4, 2)
    assert hf.tie_word_embeddings == config.tie_word_embeddings
    rope = getattr(hf, "rope_parameters", None) or {"rope_theta": hf.rope_theta, **(hf.rope_scaling or {})}
    assert rope["rope_theta"] == config.rope_theta
    if config.rope_scaling is not None:
        assert rope["rope_type"] == "llama3" and rope["factor"] == config.rope_scaling.factor
    assert hf_config_dict(config)["architectures"] == [type(model).__name__]
