"""The tokenizer: a thin wrapper around the Rust ``tokenizers.Tokenizer``.

All tokenization work (pre-tokenizing, BPE, added-token matching, decoding) happens in the Rust
library; this module only builds it from a GGUF file or a Hugging Face directory and exposes the
handful of facts the engine needs (special ids, chat template, the raw bytes of a token).

BOS: the default model's GGUF (SmolLM2-135M-Instruct) says ``tokenizer.ggml.add_bos_token = false``
and transformers honours that, so ``encode(text)`` prepends nothing for it. A sentencepiece
('llama') GGUF without the flag gets a BOS, as in transformers and llama.cpp.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders

from corral.errors import InvalidRequestError, ModelLoadError
from corral.text.backends import (
    add_named_special_tokens,
    gguf_backend,
    set_bos_eos_post_processor,
    unicode_to_byte,
)
from corral.text.chat_template import render_chat_template
from corral.text.gguf_metadata import read_gguf_metadata

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_GGUF_EOS_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


class Tokenizer:
    """Text <-> token ids for one model, plus its special tokens and chat template.

    Build it with ``from_gguf`` or ``from_pretrained_dir``. Immutable after construction; safe
    to share between requests (the Rust tokenizer is thread-safe for encode/decode).
    """

    def __init__(
        self,
        backend: RustTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
        extra_eos_token_ids: Sequence[int] = (),
    ) -> None:
        self._backend = backend
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._chat_template = chat_template
        self._bos_token_id = backend.token_to_id(bos_token) if bos_token is not None else None
        self._eos_token_id = backend.token_to_id(eos_token) if eos_token is not None else None
        eos_ids = [self._eos_token_id, *extra_eos_token_ids]
        self._eos_token_ids = tuple(dict.fromkeys(i for i in eos_ids if i is not None))
        added = backend.get_added_tokens_decoder()
        self._added_contents = {token_id: token.content for token_id, token in added.items()}
        self._special_ids = frozenset(token_id for token_id, token in added.items() if token.special)
        self._is_byte_level = isinstance(backend.decoder, decoders.ByteLevel)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str) -> Tokenizer:
        """Build the tokenizer stored in a GGUF file's metadata (byte-level or sentencepiece BPE)."""
        metadata = read_gguf_metadata(
            path, lambda key: key.startswith("tokenizer.") or key == "general.architecture"
        )
        backend = gguf_backend(metadata)
        tokens: list[str] = metadata["tokenizer.ggml.tokens"]

        def token(key: str) -> str | None:
            token_id = metadata.get(key)
            return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else None

        bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
        names = [bos, eos, token("tokenizer.ggml.unknown_token_id"), token("tokenizer.ggml.padding_token_id")]
        add_named_special_tokens(backend, names)
        # llama.cpp (and transformers) add BOS to a sentencepiece vocabulary that does not say otherwise.
        add_bos = metadata.get(
            "tokenizer.ggml.add_bos_token", metadata.get("tokenizer.ggml.model") == "llama"
        )
        add_eos = metadata.get("tokenizer.ggml.add_eos_token", False)
        _set_post_processor(backend, bos, eos, bool(add_bos), bool(add_eos))
        return cls(
            backend,
            bos_token=bos,
            eos_token=eos,
            chat_template=metadata.get("tokenizer.chat_template"),
            extra_eos_token_ids=[metadata[k] for k in _GGUF_EOS_KEYS if isinstance(metadata.get(k), int)],
        )

    @classmethod
    def from_pretrained_dir(cls, path: str) -> Tokenizer:
        """Build the tokenizer of a Hugging Face model directory (``tokenizer.json`` required).

        Reads ``tokenizer_config.json`` for bos/eos and the chat template (``chat_template.jinja`` wins),
        and the end-of-sequence ids of ``generation_config.json`` or else ``config.json``. Whether BOS is
        prepended is up to the post-processor in ``tokenizer.json``: like transformers 5, the
        ``add_bos_token``/``add_eos_token`` flags of ``tokenizer_config.json`` are ignored.
        """
        tokenizer_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_file):
            raise ModelLoadError(f"no tokenizer.json in {path!r}")
        try:
            backend = RustTokenizer.from_file(tokenizer_file)
        except Exception as e:  # the Rust parser raises plain Exception on a bad file
            raise ModelLoadError(f"cannot read {tokenizer_file}: {e}") from e
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        bos, eos = _token_content(config.get("bos_token")), _token_content(config.get("eos_token"))
        add_named_special_tokens(backend, [bos, eos])
        generation = _read_json(os.path.join(path, "generation_config.json"))
        model_config = _read_json(os.path.join(path, "config.json"))
        eos_ids = generation.get("eos_token_id", model_config.get("eos_token_id"))
        return cls(
            backend,
            bos_token=bos,
            eos_token=eos,
            chat_template=_read_chat_template(path, config),
            extra_eos_token_ids=_int_list(eos_ids),
        )

    # -- facts ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token(self) -> str | None:
        return self._bos_token

    @property
    def eos_token(self) -> str | None:
        return self._eos_token

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: ``eos_token_id`` first, then end-of-turn ids from the model."""
        return self._eos_token_ids

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids of every special added token: exactly the ids ``decode(skip_special_tokens=True)`` drops."""
        return self._special_ids

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def is_byte_level(self) -> bool:
        """True when decoding concatenates the tokens' bytes (GPT-2 style byte-level BPE)."""
        return self._is_byte_level

    @property
    def backend(self) -> RustTokenizer:
        """The underlying ``tokenizers.Tokenizer``; do not mutate it."""
        return self._backend

    # -- encode / decode -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the model's BOS/EOS rule applies."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """``encode`` for many texts at once (the Rust library spreads them over threads)."""
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD. Unknown ids are ignored."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary strings of ``ids`` (byte-level tokens in their byte-alphabet spelling)."""
        tokens = []
        for token_id in ids:
            token = self._backend.id_to_token(token_id)
            if token is None:
                raise InvalidRequestError(
                    f"token id {token_id} is outside the vocabulary of {self.vocab_size}"
                )
            tokens.append(token)
        return tokens

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes a token contributes to decoded text (``b""`` for an unknown id).

        Exact for byte-level BPE, for ``<0xXX>`` byte-fallback tokens and for added tokens; for any
        other token it is the UTF-8 of the token decoded on its own.
        """
        table = self._token_bytes
        return table[token_id] if 0 <= token_id < len(table) else b""

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render ``messages`` with the model's chat template (see ``chat_template.render_chat_template``)."""
        kwargs.setdefault("bos_token", self._bos_token)
        kwargs.setdefault("eos_token", self._eos_token)
        template = kwargs.pop("chat_template", None) or self._chat_template
        return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, **kwargs)

    def save_pretrained(self, path: str) -> None:
        """Write this tokenizer as a Hugging Face directory holds it (``tokenizer.json``,
        ``tokenizer_config.json``, ``chat_template.jinja``, ``generation_config.json``), so that
        ``from_pretrained_dir(path)`` builds an equal one, whatever it was built from."""
        os.makedirs(path, exist_ok=True)
        self._backend.save(os.path.join(path, "tokenizer.json"))
        config = {"bos_token": self._bos_token, "eos_token": self._eos_token, "tokenizer_class": "PreTrainedTokenizerFast"}
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(path, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump({"eos_token_id": list(self._eos_token_ids)}, f, indent=2)
        if self._chat_template is not None:
            with open(os.path.join(path, "chat_template.jinja"), "w", encoding="utf-8") as f:
                f.write(self._chat_template)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_token={self._bos_token!r}, "
            f"eos_token={self._eos_token!r}, byte_level={self._is_byte_level})"
        )

    # -- internals -----------------------------------------------------------------------------

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        # Built on first use (the detokenizer's hot path): one list lookup per token afterwards.
        table = [b""] * self.vocab_size
        if self._is_byte_level:
            alphabet = unicode_to_byte()
            spelled = set(alphabet)
            to_latin1 = str.maketrans({c: chr(b) for c, b in alphabet.items()})
            for token, token_id in self._backend.get_vocab(with_added_tokens=False).items():
                if 0 <= token_id < len(table):
                    # The byte-level decoder passes a token spelled outside its alphabet through as UTF-8.
                    table[token_id] = (
                        token.translate(to_latin1).encode("latin-1")
                        if set(token) <= spelled
                        else token.encode()
                    )
            for token_id, content in self._added_contents.items():
                if 0 <= token_id < len(table):
                    table[token_id] = content.encode()
            return table
        return [self._decoded_bytes(token_id) for token_id in range(len(table))]

    def _decoded_bytes(self, token_id: int) -> bytes:
        if token_id in self._added_contents:
            return self._added_contents[token_id].encode()
        token = self._backend.id_to_token(token_id)
        if token is None:
            return b""
        byte = _BYTE_TOKEN.fullmatch(token)
        if byte is not None:
            return bytes([int(byte.group(1), 16)])
        return self._backend.decode([token_id], skip_special_tokens=False).encode()


def _set_post_processor(
    backend: RustTokenizer, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool
) -> None:
    bos_id = backend.token_to_id(bos) if bos is not None and add_bos else None
    eos_id = backend.token_to_id(eos) if eos is not None and add_eos else None
    set_bos_eos_post_processor(
        backend,
        (bos, bos_id) if bos is not None and bos_id is not None else None,
        (eos, eos_id) if eos is not None and eos_id is not None else None,
    )


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} should hold a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_chat_template(path: str, config: Mapping[str, Any]) -> str | None:
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _int_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []
