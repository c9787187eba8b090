"""Model shapes: the built-in table reproduces each model's published parameter count, the implied tensors
are the loader's, and a GGUF file reads as the loader reads it, without torch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from corral.errors import ConfigError, ModelLoadError
from corral.loader import read_gguf_config, read_gguf_file
from corral.loader.names import expected_shapes
from corral.models.spec import ModelConfig
from corral.planner.model_files import default_model_path, load_model_shape, read_gguf_shape
from corral.planner.models import BUILTIN_MODELS, ModelShape

# Parameter counts as the models' Hugging Face pages give them (safetensors totals).
PUBLISHED = {
    "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824, "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496, "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360, "mixtral-8x7b": 46_702_792_704, "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_builtin_shapes_give_the_published_parameter_counts(name):
    assert BUILTIN_MODELS[name].num_parameters() == PUBLISHED[name]


def test_every_builtin_model_has_a_source():
    for shape in BUILTIN_MODELS.values():
        assert "huggingface.co/" in shape.source


CONFIG = ModelConfig(architecture="llama", vocab_size=300, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128)


@pytest.mark.parametrize("config", [CONFIG, replace(CONFIG, tie_word_embeddings=True, head_dim=16),
                                    replace(CONFIG, architecture="qwen2", attention_bias=True)])
def test_implied_tensors_are_the_loaders(config):
    shape = ModelShape(
        name="x", **{f: getattr(config, f) for f in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "head_dim", "tie_word_embeddings", "attention_bias")})
    assert {t.name: t.shape for t in shape.implied_tensors()} == expected_shapes(config)


def test_a_gguf_file_reads_as_the_loader_reads_it():
    path = default_model_path()
    shape = read_gguf_shape(path)
    config = read_gguf_config(read_gguf_file(path))
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "head_dim", "tie_word_embeddings",
                  "attention_bias", "head_size"):
        assert getattr(shape, field) == getattr(config, field), field
    assert len(shape.file_tensors) == 30 * 9 + 2
    assert {t.role for t in shape.file_tensors} == {"embedding", "norm", "linear"}


def test_the_default_model_is_found_without_the_loader():
    from corral.loader.default_model import default_model_path as loaders

    assert default_model_path() == loaders()
    assert load_model_shape(None).source == loaders()


def test_a_config_json_is_read(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "qwen3", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, '
        '"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, '
        '"max_position_embeddings": 512, "tie_word_embeddings": true, "torch_dtype": "float16"}')
    shape = load_model_shape(str(tmp_path))
    assert (shape.head_size, shape.qk_norm, shape.tie_word_embeddings, shape.torch_dtype) == (32, True, True, "fp16")
    assert not shape.attention_bias


def test_unknown_models_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="built-in: llama-3.2-1b"):
        load_model_shape("no-such-model")
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model_shape(str(tmp_path))
    (tmp_path / "config.json").write_text('{"vocab_size": 10}')
    with pytest.raises(ModelLoadError, match="lacks 'num_attention_heads'"):
        load_model_shape(str(tmp_path / "config.json"))
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelLoadError, match="malformed or truncated"):
        load_model_shape(str(tmp_path / "bad.gguf"))
