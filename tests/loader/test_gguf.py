"""GGUF loading: round trips through small files written like llama.cpp's converter, and bad input."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType

from corral.errors import ModelLoadError, UnsupportedModelError
from corral.loader import gguf_writer
from corral.loader.gguf import load_gguf, open_gguf, read_gguf_config
from corral.loader.gguf_file import read_gguf_file
from corral.loader.gguf_writer import write_gguf_tensors, write_tiny_gguf
from corral.loader.names import expected_shapes
from corral.models.spec import RopeScaling
from corral.quantization.blockwise import BlockQuantized

# worst-case |dequantized - original| for uniform [-1, 1) weights
TOLERANCE = {
    QType.F32: 0.0,
    QType.F16: 1e-3,
    QType.BF16: 1e-2,
    QType.Q8_0: 1e-2,
    QType.Q4_0: 0.13,  # the block's largest magnitude maps to -8, so +7/8 of it is the far end
    QType.Q4_1: 0.07,
}


def quant_round_trip(weight: torch.Tensor, qtype: QType) -> torch.Tensor:
    if weight.ndim == 1:
        return weight  # llama.cpp keeps norms and biases in F32
    values = weight.numpy()
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype).copy())


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", list(TOLERANCE))
def test_round_trip_equals_dequantized_originals(tmp_path, tiny_config, random_weights, architecture, qtype):
    config = tiny_config(architecture)
    weights = random_weights(config)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, config, weights, qtype)

    loaded_config, loaded = load_gguf(str(path))

    assert loaded_config == config
    assert loaded.keys() == weights.keys()
    for name, original in weights.items():
        # exact: the loader must reproduce gguf's own dequantization, in HF row order (q/k unpermuted)
        torch.testing.assert_close(loaded[name], quant_round_trip(original, qtype), rtol=0, atol=0, msg=name)
        torch.testing.assert_close(loaded[name], original, rtol=0, atol=TOLERANCE[qtype], msg=name)


def test_llama_qk_rows_are_stored_permuted_and_loaded_unpermuted(tmp_path, tiny_config, random_weights):
    config = tiny_config("llama", attention_bias=True)
    weights = random_weights(config)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, config, weights)

    stored = read_gguf_file(path).tensors
    _, loaded = load_gguf(str(path))

    for gguf_name, hf_name in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.1.attn_k.bias", "model.layers.1.self_attn.k_proj.bias"),
    ]:
        raw = torch.from_numpy(gguf.quants.dequantize(stored[gguf_name].data, QType.F32).copy())
        assert not torch.equal(raw, weights[hf_name])  # the file really holds llama.cpp's order
        assert torch.equal(loaded[hf_name], weights[hf_name])
    # v has no rotary embedding, so llama.cpp leaves it alone
    v_raw = gguf.quants.dequantize(stored["blk.0.attn_v.weight"].data, QType.F32)
    assert torch.equal(torch.from_numpy(v_raw.copy()), weights["model.layers.0.self_attn.v_proj.weight"])


@pytest.mark.parametrize("qtype", [QType.Q4_K, QType.Q5_K, QType.Q6_K])
def test_k_quants_dequantize_like_gguf(tmp_path, tiny_config, qtype):
    # gguf-py cannot quantize K-quants, so write random blocks with small, finite fp16 scales
    config = tiny_config(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    scale_offsets = {QType.Q4_K: (0, 2), QType.Q5_K: (0, 2), QType.Q6_K: (208,)}[qtype]
    rng = np.random.default_rng(0)
    encoded, expected = {}, {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:
            values = rng.uniform(-1, 1, shape).astype(np.float32)
            encoded[name], expected[name] = (values, QType.F32), values
            continue
        blocks = rng.integers(0, 256, (shape[0], shape[1] // block_size, type_size), dtype=np.uint8)
        scales = rng.uniform(1e-3, 1e-2, (*blocks.shape[:2], len(scale_offsets))).astype(np.float16)
        for i, offset in enumerate(scale_offsets):
            blocks[..., offset : offset + 2] = scales[..., i : i + 1].view(np.uint8)
        raw = blocks.reshape(shape[0], -1)
        encoded[name] = (raw, qtype)
        expected[name] = gguf.quants.dequantize(raw, qtype)
    path = tmp_path / "kquant.gguf"
    write_gguf_tensors(path, config, encoded)

    _, loaded = load_gguf(str(path), dtype=torch.float32)

    for name, values in expected.items():
        assert torch.isfinite(loaded[name]).all()
        assert torch.equal(loaded[name], torch.from_numpy(np.ascontiguousarray(values))), name


def test_dtype_cast(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    weights = random_weights(config)
    write_tiny_gguf(tmp_path / "t.gguf", config, weights, QType.F16)
    _, loaded = load_gguf(str(tmp_path / "t.gguf"), dtype=torch.bfloat16)
    assert {t.dtype for t in loaded.values()} == {torch.bfloat16}


def test_config_round_trip_with_extras(tmp_path, tiny_config, random_weights):
    scaling = RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
    )
    config = tiny_config(
        head_dim=32,  # differs from hidden_size // num_attention_heads
        rope_scaling=scaling,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        eos_token_ids=(2, 7, 9),
    )
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, config, random_weights(config))

    assert read_gguf_config(read_gguf_file(path)) == config
    _, loaded = load_gguf(str(path))
    assert "lm_head.weight" not in loaded  # tied; rope_freqs is consumed into the config
    assert loaded["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 32, 64)


def test_rope_freqs_without_standard_llama3_parameters_is_refused(tmp_path, tiny_config, random_weights):
    scaling = RopeScaling(
        factor=8.0, low_freq_factor=2.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    config = tiny_config(rope_scaling=scaling)
    write_tiny_gguf(tmp_path / "t.gguf", config, random_weights(config))
    with pytest.raises(UnsupportedModelError, match="rope_freqs"):
        load_gguf(str(tmp_path / "t.gguf"))


def test_header_parser_agrees_with_gguf_reader(tmp_path, tiny_config, random_weights):
    config = tiny_config("qwen2")
    path = tmp_path / "t.gguf"
    extra = {
        "tokenizer.ggml.tokens": ["a", "b", "ü"],
        "tokenizer.ggml.scores": [0.5, -1.0, 2.0],
        "x.flag": True,
    }
    write_tiny_gguf(path, config, random_weights(config), QType.Q8_0, extra_metadata=extra)

    ours = read_gguf_file(path)
    reference = gguf.GGUFReader(path)

    for key, field in reference.fields.items():
        if not key.startswith("GGUF."):
            assert ours.metadata[key] == pytest.approx(field.contents()), key
    assert list(ours.tensors) == [t.name for t in reference.tensors]
    for tensor in reference.tensors:
        mine = ours.tensors[tensor.name]
        assert mine.qtype == tensor.tensor_type
        assert np.array_equal(mine.data.reshape(-1), tensor.data.reshape(-1).view(np.uint8))


# --- bad input ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match="nope.gguf"):
        load_gguf(str(path))


@pytest.mark.parametrize("content", [b"", b"hello, I am not a model\n", b"GGUF"])
def test_not_a_gguf_file(tmp_path, content):
    path = tmp_path / "fake.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="fake.gguf"):
        load_gguf(str(path))


@pytest.mark.parametrize("keep_fraction", [0.01, 0.5, 0.99])
def test_truncated_file(tmp_path, tiny_config, random_weights, keep_fraction):
    config = tiny_config()
    path = tmp_path / "cut.gguf"
    write_tiny_gguf(path, config, random_weights(config))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(ModelLoadError, match="cut.gguf") as info:
        load_gguf(str(path))
    assert not isinstance(info.value, UnsupportedModelError)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_gguf(str(path))


def test_unsupported_tensor_type(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    write_tiny_gguf(tmp_path / "q5.gguf", config, random_weights(config), QType.Q5_0)
    with pytest.raises(UnsupportedModelError, match=r"token_embd\.weight.*Q5_0"):
        load_gguf(str(tmp_path / "q5.gguf"))


def test_unexpected_tensor_name(tmp_path, tiny_config, random_weights, monkeypatch):
    config = tiny_config()
    original = gguf_writer.gguf_tensor_name
    renamed = {"model.layers.0.input_layernorm.weight": "blk.0.attn_sinks.weight"}
    monkeypatch.setattr(gguf_writer, "gguf_tensor_name", lambda name: renamed.get(name) or original(name))
    write_tiny_gguf(tmp_path / "t.gguf", config, random_weights(config))
    with pytest.raises(UnsupportedModelError, match="attn_sinks"):
        load_gguf(str(tmp_path / "t.gguf"))


def test_linear_rope_scaling_is_refused(tmp_path, tiny_config, random_weights):
    config = tiny_config()
    path = tmp_path / "t.gguf"
    write_tiny_gguf(
        path, config, random_weights(config), extra_metadata={"llama.rope.scaling.type": "linear"}
    )
    with pytest.raises(UnsupportedModelError, match="linear"):
        load_gguf(str(path))


def test_open_gguf_reads_each_tensor_on_access_and_again_after_eviction(tmp_path, tiny_config, random_weights):
    config = tiny_config("llama")
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, config, random_weights(config), QType.Q8_0)
    _, eager = load_gguf(str(path))

    _, lazy = open_gguf(str(path))
    assert set(lazy) == set(eager) and lazy.shapes == {n: tuple(t.shape) for n, t in eager.items()}
    name = "model.layers.1.mlp.down_proj.weight"
    first = lazy[name]  # its file pages are dropped from memory after the read ...
    assert torch.equal(first, eager[name])
    assert torch.equal(lazy[name], first)  # ... and fault back in on the next
    with pytest.raises(KeyError):
        lazy["model.layers.2.mlp.down_proj.weight"]


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", [QType.Q4_0, QType.Q4_1, QType.Q8_0])
def test_kept_quantized_blocks_dequantize_to_the_float_load(tmp_path, tiny_config, random_weights, architecture, qtype):
    config = tiny_config(architecture)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, config, random_weights(config), qtype)
    _, floats = load_gguf(str(path))

    _, kept = open_gguf(str(path), keep_quantized=True)
    packed = 0
    for name, expected in floats.items():
        tensor = kept[name]
        if isinstance(tensor, BlockQuantized):  # every matrix; norms and biases stay F32
            packed += 1
            assert tensor.bits == (8 if qtype == QType.Q8_0 else 4) and tensor.group_size == 32
            # bit for bit gguf's dequantization, in HF row order (llama's q/k unpermuted)
            assert torch.equal(tensor.dequantize(), expected), name
        else:
            assert tensor.dim() == 1 and torch.equal(tensor, expected), name
    assert packed == sum(1 for t in floats.values() if t.dim() == 2)
