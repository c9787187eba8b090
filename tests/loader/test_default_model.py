"""The default model loads to exactly what transformers loads from the same GGUF file."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from corral.errors import ModelLoadError
from corral.loader.default_model import default_model_path
from corral.loader.gguf import load_gguf
from corral.loader.gguf_file import read_gguf_file


@pytest.fixture(scope="module")
def ours():
    return load_gguf(default_model_path(), torch.float32)


@pytest.fixture(scope="module")
def reference(hf_default_model):
    return hf_default_model.config, hf_default_model.state_dict()


def test_path_is_the_installed_gguf():
    path = default_model_path()
    assert path.endswith(".gguf") and os.path.isfile(path)
    assert len(read_gguf_file(path).tensors) == 272


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModelLoadError, match="pip install"):
        default_model_path()


def test_config_matches_transformers(ours, reference):
    config, _ = ours
    hf, _ = reference
    rope_theta = (getattr(hf, "rope_parameters", None) or {}).get(
        "rope_theta", getattr(hf, "rope_theta", None)
    )
    assert config.architecture == hf.model_type == "llama"
    assert config.hidden_size == hf.hidden_size == 576
    assert config.intermediate_size == hf.intermediate_size
    assert config.num_hidden_layers == hf.num_hidden_layers == 30
    assert config.num_attention_heads == hf.num_attention_heads == 9
    assert config.num_key_value_heads == hf.num_key_value_heads == 3
    assert config.head_size == hf.head_dim == 64
    assert config.max_position_embeddings == hf.max_position_embeddings
    assert config.rope_theta == rope_theta == 100000.0
    assert config.rms_norm_eps == pytest.approx(hf.rms_norm_eps, rel=1e-7)
    assert config.vocab_size == hf.vocab_size == 49152
    assert config.tie_word_embeddings is hf.tie_word_embeddings is True
    assert config.rope_scaling is None and config.attention_bias is False
    assert (config.bos_token_id, config.eos_token_ids) == (hf.bos_token_id, (hf.eos_token_id,))


def test_weights_match_transformers(ours, reference):
    _, state_dict = ours
    _, hf_state = reference
    assert set(hf_state) - set(state_dict) == {"lm_head.weight"}  # tied: transformers lists the shared tensor
    assert set(state_dict) <= set(hf_state)
    for name, tensor in state_dict.items():
        if not torch.equal(tensor, hf_state[name]):  # equal in practice; the full comparison is slow
            torch.testing.assert_close(tensor, hf_state[name], rtol=0, atol=1e-6, msg=name)
    assert torch.equal(hf_state["lm_head.weight"], state_dict["model.embed_tokens.weight"])


@pytest.mark.parametrize("layer", [0, 29])
def test_qk_projections_match_exactly(ours, reference, layer):
    # q/k are where a missing or wrong un-permute would show
    _, state_dict = ours
    _, hf_state = reference
    for proj in ("q_proj", "k_proj"):
        name = f"model.layers.{layer}.self_attn.{proj}.weight"
        assert torch.equal(state_dict[name], hf_state[name]), name
