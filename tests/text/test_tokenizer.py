"""corral.text.tokenizer: encoding and decoding equal transformers' for the same GGUF or directory."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from corral.errors import ChatTemplateError, InvalidRequestError, ModelLoadError, UnsupportedModelError
from corral.text.backends import byte_to_unicode, set_bos_eos_post_processor
from corral.text.tokenizer import Tokenizer

TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "   three leading spaces",
    "multiple    spaces   between words",
    "tabs\tand\ttabs",
    "line one\nline two\n\nline four\r\nwindows line",
    "\n\n\n",
    " \n \t ",
    "12345 678 1.5e10 3,000,000 007",
    "Phone: +1 (555) 010-9999, year 2024.",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    "import numpy as np\nx = np.arange(10)[::2]  # comment",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
    "<html><body><p class='x'>Hi &amp; bye</p></body></html>",
    "I'm sure it's what they'd've done, isn't it? We'll see. You're RIGHT.",
    "ALL CAPS SENTENCE WITH NUMBERS 42",
    "naïve café résumé coöperate façade",
    "Ελληνικά και русский язык",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "emoji: 😀🎉👍🏽 and flags 🇫🇷🇯🇵",
    "family: 👨‍👩‍👧‍👦 zwj sequence",
    "math: ∑ x² ≤ ∞, α β γ → λ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more text<|endoftext|>",
    "not quite special <|im_start |> <im_start> <|im_end",
    "<repo_name>corral<file_sep>main.py",
    "a\u00a0non-breaking\u2009thin\u200bzero-width",
    "control chars \x00\x01\x7f end",
    "!!!???...,,,;;;:::---___===+++",
    "https://example.com/path?query=1&other=two#frag",
    "Ġ and Ċ are byte-level spellings, not real text",
    "repeated " * 20,
]


def test_texts_are_diverse_enough() -> None:
    assert len(TEXTS) >= 30


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(
    smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any, text: str
) -> None:
    assert smollm2_tokenizer.encode(text) == hf_smollm2_tokenizer.encode(text)
    assert smollm2_tokenizer.encode(text, add_special_tokens=False) == hf_smollm2_tokenizer.encode(
        text, add_special_tokens=False
    )


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers(
    smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any, text: str
) -> None:
    ids = hf_smollm2_tokenizer.encode(text)
    for skip in (True, False):
        assert smollm2_tokenizer.decode(ids, skip_special_tokens=skip) == hf_smollm2_tokenizer.decode(
            ids, skip_special_tokens=skip
        )
    assert smollm2_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_no_bos_for_the_default_model(smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any) -> None:
    # The GGUF says tokenizer.ggml.add_bos_token = false; transformers honours it, and so do we.
    assert smollm2_tokenizer.encode("Hi") == hf_smollm2_tokenizer("Hi")["input_ids"]
    assert smollm2_tokenizer.encode("Hi")[0] != smollm2_tokenizer.bos_token_id
    assert hf_smollm2_tokenizer.add_bos_token is False


def test_special_ids_and_vocab(smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any) -> None:
    tok, hf = smollm2_tokenizer, hf_smollm2_tokenizer
    assert tok.vocab_size == len(hf) == 49152
    assert (tok.bos_token_id, tok.eos_token_id) == (hf.bos_token_id, hf.eos_token_id) == (1, 2)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tok.eos_token_ids == (2,)
    assert set(hf.all_special_ids) <= tok.all_special_ids
    # Every control token is special: exactly what decode(skip_special_tokens=True) drops.
    assert tok.all_special_ids == frozenset(range(17))
    assert tok.decode(sorted(tok.all_special_ids)) == ""
    assert tok.is_byte_level
    assert tok.chat_template == hf.chat_template


def test_convert_ids_to_tokens(smollm2_tokenizer: Tokenizer, hf_smollm2_tokenizer: Any) -> None:
    ids = hf_smollm2_tokenizer.encode(TEXTS[2] + TEXTS[22] + TEXTS[28])
    assert smollm2_tokenizer.convert_ids_to_tokens(ids) == hf_smollm2_tokenizer.convert_ids_to_tokens(ids)
    with pytest.raises(InvalidRequestError):
        smollm2_tokenizer.convert_ids_to_tokens([smollm2_tokenizer.vocab_size])


@pytest.mark.parametrize("text", TEXTS)
def test_id_to_bytes_concatenates_to_the_text(smollm2_tokenizer: Tokenizer, text: str) -> None:
    ids = smollm2_tokenizer.encode(text)
    assert b"".join(smollm2_tokenizer.id_to_bytes(i) for i in ids) == text.encode()


def test_id_to_bytes_of_every_token(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    for token_id in range(0, tok.vocab_size, 7):
        text = tok.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in text:
            assert tok.id_to_bytes(token_id) == text.encode()
    assert tok.id_to_bytes(tok.vocab_size + 5) == b""
    assert tok.id_to_bytes(-1) == b""


def test_batch_encode(smollm2_tokenizer: Tokenizer) -> None:
    assert smollm2_tokenizer.encode_batch(TEXTS[:5]) == [smollm2_tokenizer.encode(t) for t in TEXTS[:5]]


def test_apply_chat_template(smollm2_tokenizer: Tokenizer) -> None:
    prompt = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = smollm2_tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[0] == smollm2_tokenizer.bos_token_id  # the template writes <|im_start|> itself


# -- sentencepiece ('llama') GGUF: a small synthetic vocabulary checked against transformers ------------


SPM_TEXTS = [
    "the quick brown fox",
    " hello  world",
    "Zebra 中文 x",
    "<s>the <|user|> hi</s>",
    "",
    "tokenization\nof\ttabs",
    "emoji 😀 falls back to bytes",
]


def _backend_json(backend: Any) -> dict[str, Any]:
    return json.loads(backend.to_str())


@pytest.mark.parametrize("add_bos", [None, True, False])
def test_sentencepiece_gguf_matches_transformers(
    gguf_writer: Any, sentencepiece_metadata_factory: Any, add_bos: bool | None
) -> None:
    import transformers

    path = gguf_writer("spm.gguf", sentencepiece_metadata_factory(add_bos))
    ours = Tokenizer.from_gguf(path)
    theirs = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file="spm.gguf")
    assert _backend_json(ours.backend) == _backend_json(theirs.backend_tokenizer)
    for text in SPM_TEXTS:
        ids = theirs.encode(text)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids)
    # No flag: llama.cpp and transformers add BOS to a sentencepiece vocabulary.
    assert (ours.encode("hello")[0] == 1) == (add_bos is not False)
    assert not ours.is_byte_level
    assert ours.id_to_bytes(3 + 0x41) == b"A"  # the <0x41> byte-fallback token


def _byte_level_metadata(pre: str) -> dict[str, Any]:
    alphabet = list(byte_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "1 2", "12 3", "Ġ 1", "' s"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = ["<|endoftext|>", "<|im_start|>", *alphabet, *merged, "<think>"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, *[1] * (len(alphabet) + len(merged)), 4],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 0,
    }


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe", "qwen2", "gpt-2-unknown-name"])
def test_byte_level_split_patterns_match_transformers(gguf_writer: Any, pre: str) -> None:
    import transformers

    path = gguf_writer("bpe.gguf", _byte_level_metadata(pre))
    ours = Tokenizer.from_gguf(path)
    theirs = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file="bpe.gguf")
    text = "the 12345 cats's <think>in  the\n\n  hat's 1234567 😀"
    assert ours.encode(text) == theirs.encode(text)
    assert (
        _backend_json(ours.backend)["pre_tokenizer"]
        == _backend_json(theirs.backend_tokenizer)["pre_tokenizer"]
    )


def test_unsupported_tokenizer_models(gguf_writer: Any, sentencepiece_metadata_factory: Any) -> None:
    metadata = sentencepiece_metadata_factory()
    with pytest.raises(UnsupportedModelError, match="t5"):
        Tokenizer.from_gguf(gguf_writer("t5.gguf", {**metadata, "tokenizer.ggml.model": "t5"}))
    with pytest.raises(UnsupportedModelError, match="gemma"):
        Tokenizer.from_gguf(gguf_writer("gemma.gguf", metadata, architecture="gemma"))


def test_gguf_without_tokenizer(gguf_writer: Any) -> None:
    with pytest.raises(ModelLoadError, match="tokens"):
        Tokenizer.from_gguf(gguf_writer("empty.gguf", {"general.name": "x"}))


# -- Hugging Face directory --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: Any, hf_smollm2_tokenizer: Any) -> str:
    """The default model's tokenizer saved the transformers way (tokenizer.json + config + jinja)."""
    directory = str(tmp_path_factory.mktemp("hf_tokenizer"))
    hf_smollm2_tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [2, 0]}, f)
    return directory


def test_pretrained_dir_matches_transformers(hf_dir: str, hf_smollm2_tokenizer: Any) -> None:
    tok = Tokenizer.from_pretrained_dir(hf_dir)
    for text in TEXTS:
        assert tok.encode(text) == hf_smollm2_tokenizer.encode(text)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.eos_token_ids == (2, 0)
    assert tok.chat_template == hf_smollm2_tokenizer.chat_template
    assert tok.is_byte_level


def test_pretrained_dir_bos_comes_from_tokenizer_json(
    hf_dir: str, tmp_path: Any, smollm2_tokenizer: Tokenizer
) -> None:
    import transformers

    backend = Tokenizer.from_pretrained_dir(hf_dir).backend
    set_bos_eos_post_processor(backend, ("<|im_start|>", 1), None)
    (tmp_path / "tokenizer.json").write_text(backend.to_str())
    # transformers 5 ignores this flag when tokenizer.json exists; the post-processor decides.
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_pretrained_dir(str(tmp_path))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.encode("hi there") == theirs.encode("hi there") == [1, *smollm2_tokenizer.encode("hi there")]
    assert tok.chat_template is None
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    # Older configs write a special token as an AddedToken dict.
    config["eos_token"] = {"__type": "AddedToken", "content": "<|im_end|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained_dir(str(tmp_path)).eos_token_id == 2


def test_pretrained_dir_errors(tmp_path: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Tokenizer.from_pretrained_dir(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError):
        Tokenizer.from_pretrained_dir(str(tmp_path))


def test_save_pretrained_round_trips(smollm2_tokenizer: Tokenizer, tmp_path: Any) -> None:
    """A GGUF-built tokenizer saved as an HF directory (what ``corral quantize`` writes) reads back equal."""
    smollm2_tokenizer.save_pretrained(str(tmp_path))
    loaded = Tokenizer.from_pretrained_dir(str(tmp_path))
    for text in TEXTS:
        assert loaded.encode(text) == smollm2_tokenizer.encode(text)
    assert (loaded.bos_token_id, loaded.eos_token_ids) == (smollm2_tokenizer.bos_token_id, smollm2_tokenizer.eos_token_ids)
    assert loaded.all_special_ids == smollm2_tokenizer.all_special_ids
    assert loaded.chat_template == smollm2_tokenizer.chat_template
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages) == smollm2_tokenizer.apply_chat_template(messages)
