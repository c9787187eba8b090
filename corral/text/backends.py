"""Build a ``tokenizers.Tokenizer`` (the Rust BPE) from the vocabulary a GGUF file stores.

A GGUF carries no ``tokenizer.json``: only tokens, merges or scores, token types and special ids
under llama.cpp's key names. The pieces around the BPE model (pre-tokenizer, decoder,
post-processor) are chosen here to match what ``transformers`` builds when it loads the same file
with ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``, because that is the reference the
tests check against.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer

from corral.errors import ModelLoadError, UnsupportedModelError

# llama.cpp token types (tokenizer.ggml.token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

_SPM_SPACE = "\u2581"

# Split regexes for byte-level vocabularies whose merges were learned on a split other than GPT-2's,
# keyed by tokenizer.ggml.pre. These are the models' own pre-tokenizer patterns; any other name
# (SmolLM's "smollm" included) gets GPT-2's built-in pattern, as transformers does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_REGEX_BY_PRE: dict[str, str] = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}

# Sentencepiece vocabularies of these architectures need transformers' per-model fixes (respelled
# space tokens, merges in file order, a normalizer instead of Metaspace) that are not reproduced here.
_SPM_ARCHITECTURES_NEEDING_FIXES = ("gemma", "gemma2", "gemma3", "phi3")


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used to spell byte-level BPE tokens.

    Bytes that are printable Latin-1 stand for themselves; the other 68 are shifted to U+0100 and up,
    in byte order, so no token contains whitespace or control characters.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(0x100 + n) for n, b in enumerate(shifted)})
    return dict(sorted(table.items()))


@cache
def unicode_to_byte() -> dict[str, int]:
    return {char: b for b, char in byte_to_unicode().items()}


def gguf_backend(metadata: dict[str, Any]) -> RustTokenizer:
    """The Rust tokenizer described by a GGUF file's ``tokenizer.*`` metadata (no post-processor)."""
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError("GGUF file has no tokenizer.ggml.tokens: it does not carry a tokenizer")
    token_types: Sequence[int] = metadata.get("tokenizer.ggml.token_type") or ()
    architecture = metadata.get("general.architecture", "")
    if model == "gpt2":
        merges = metadata.get("tokenizer.ggml.merges")
        if merges is None:
            raise ModelLoadError("byte-level BPE GGUF tokenizer has no tokenizer.ggml.merges")
        backend = byte_level_bpe(tokens, merges, metadata.get("tokenizer.ggml.pre"))
        spelled = set(byte_to_unicode().values())
        # A control token spelled outside the byte alphabet is a llama.cpp mislabel; adding it would
        # grow the vocabulary past the embedding, so it is left as a plain (unreachable) entry.
        add_gguf_added_tokens(backend, tokens, token_types, lambda token: set(token) <= spelled)
    elif model == "llama" and architecture not in _SPM_ARCHITECTURES_NEEDING_FIXES:
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise ModelLoadError(
                "sentencepiece GGUF tokenizer needs one tokenizer.ggml.scores entry per token"
            )
        backend = sentencepiece_bpe(tokens, scores)
        add_gguf_added_tokens(backend, tokens, token_types, lambda token: True)
    elif model == "llama":
        raise UnsupportedModelError(
            f"the sentencepiece tokenizer of a {architecture!r} GGUF needs model-specific fixes that corral "
            "does not implement; load the model from a Hugging Face directory with tokenizer.json instead"
        )
    else:
        raise UnsupportedModelError(
            f"GGUF tokenizer.ggml.model={model!r} is not supported (supported: 'gpt2' byte-level BPE, "
            "'llama' sentencepiece BPE); load the model from a directory with tokenizer.json instead"
        )
    return backend


def byte_level_bpe(tokens: Sequence[str], merges: Sequence[str], pre: str | None) -> RustTokenizer:
    """GPT-2 style BPE over the byte alphabet, with the split pattern ``pre`` calls for."""
    alphabet = unicode_to_byte()
    spelling = byte_to_unicode()
    # Some files write a token as plain UTF-8 rather than in the byte alphabet; respell it so the merges,
    # which are in the byte alphabet, still reach it.
    vocab = {
        token if all(c in alphabet for c in token) else "".join(spelling[b] for b in token.encode()): index
        for index, token in enumerate(tokens)
    }
    pairs = [_split_merge(merge) for merge in merges]
    backend = RustTokenizer(
        models.BPE(
            vocab=vocab,
            merges=pairs,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    split = SPLIT_REGEX_BY_PRE.get(pre or "")
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def sentencepiece_bpe(tokens: Sequence[str], scores: Sequence[float]) -> RustTokenizer:
    """Llama/Mistral-style sentencepiece BPE: ``▁`` for spaces, a prefix space, byte fallback.

    The file has scores, not merges; the merges are recovered from the vocabulary (see
    ``merges_from_scores``). Like transformers, this always prepends ``▁`` to the first word and
    ignores tokenizer.ggml.add_space_prefix.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = RustTokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges_from_scores(vocab, dict(zip(tokens, scores))),
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_SPM_SPACE, prepend_scheme="first", split=False
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(_SPM_SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    return backend


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a token into two tokens of the vocabulary, best score first.

    Ties keep a fixed order (longer left piece, then longer right piece, then vocabulary order),
    the same order transformers produces, because BPE applies tied merges in list order.
    """
    candidates: list[tuple[str, str, float]] = []
    for token, score in scores.items():
        splits = [(token[:i], token[i:]) for i in range(1, len(token))]
        found = sorted(
            ((left, right) for left, right in splits if left in vocab and right in vocab),
            key=lambda pair: (vocab[pair[0]], vocab[pair[1]]),
        )
        candidates.extend((left, right, score) for left, right in found)
    # Python's sort is stable, so equal keys keep the insertion order built above.
    candidates.sort(key=lambda c: (c[2], len(c[0]), len(c[1])), reverse=True)
    return [(left, right) for left, right, _ in candidates]


def add_gguf_added_tokens(
    backend: RustTokenizer, tokens: Sequence[str], token_types: Sequence[int], allowed: Any
) -> None:
    """Register CONTROL tokens as special and USER_DEFINED ones as plain added tokens.

    Added tokens are matched whole in the input text before BPE runs, so ``<|im_start|>`` in a
    prompt stays one token instead of being cut into pieces, as llama.cpp and transformers do.
    """
    control = [
        AddedToken(token, normalized=False, special=True)
        for token, kind in zip(tokens, token_types)
        if kind == TOKEN_TYPE_CONTROL and allowed(token)
    ]
    if control:
        backend.add_special_tokens(control)
    vocab = backend.get_vocab(with_added_tokens=True)
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, token_types)
        if kind == TOKEN_TYPE_USER_DEFINED and token in vocab
    ]
    if user_defined:
        backend.add_tokens(user_defined)


def add_named_special_tokens(backend: RustTokenizer, names: Sequence[str | None]) -> None:
    """Make sure bos/eos/unk/pad are special added tokens (matched whole, skipped on decode)."""
    known = {token.content for token in backend.get_added_tokens_decoder().values()}
    missing = [
        AddedToken(name, normalized=False, special=True) for name in names if name and name not in known
    ]
    if missing:
        backend.add_special_tokens(missing)


def set_bos_eos_post_processor(
    backend: RustTokenizer, bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> None:
    """Prepend ``bos`` / append ``eos`` (``(token, id)``; None for neither) when encoding with specials."""
    single = " ".join([*([f"{bos[0]}:0"] if bos else []), "$A:0", *([f"{eos[0]}:0"] if eos else [])])
    pair = " ".join([single, *([f"{bos[0]}:1"] if bos else []), "$B:1", *([f"{eos[0]}:1"] if eos else [])])
    special = [pair_ for pair_ in (bos, eos) if pair_ is not None]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _split_merge(merge: str) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if not sep:
        raise ModelLoadError(f"malformed BPE merge {merge!r}: expected two tokens separated by a space")
    return left, right
