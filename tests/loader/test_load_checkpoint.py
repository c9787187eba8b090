"""load_checkpoint dispatches on what the path is."""

from __future__ import annotations

import pytest
import torch

import corral.loader
from corral.errors import ModelLoadError
from corral.loader import load_checkpoint, save_hf_dir
from corral.loader.gguf_writer import write_tiny_gguf


def test_none_loads_the_default_model(tmp_path, tiny_config, random_weights, monkeypatch):
    config = tiny_config()
    write_tiny_gguf(tmp_path / "default.gguf", config, random_weights(config))
    monkeypatch.setattr(corral.loader, "default_model_path", lambda: str(tmp_path / "default.gguf"))
    loaded_config, _ = load_checkpoint(None, torch.float32)
    assert loaded_config == config


def test_gguf_file_and_hf_dir(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    weights = random_weights(config)
    write_tiny_gguf(tmp_path / "m.gguf", config, weights)
    save_hf_dir(str(tmp_path / "hf"), config, weights)
    gguf_config, from_gguf = load_checkpoint(str(tmp_path / "m.gguf"), torch.bfloat16)
    hf_config, from_hf = load_checkpoint(tmp_path / "hf", torch.bfloat16)
    assert gguf_config == hf_config == config
    assert all(torch.equal(from_gguf[n], from_hf[n]) for n in weights)


@pytest.mark.parametrize("name", ["missing.gguf", "missing_dir", "weights.bin", "empty_dir"])
def test_anything_else_is_a_load_error(tmp_path, name):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelLoadError, match=name):
        load_checkpoint(str(tmp_path / name), torch.float32)
