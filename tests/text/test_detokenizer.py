"""corral.text.detokenizer: streamed text always equals the full decode, never a broken character."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.text.detokenizer import IncrementalDetokenizer
from corral.text.tokenizer import Tokenizer

_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def stream(
    tokenizer: Tokenizer, ids: Sequence[int], chunk_sizes: Sequence[int], skip_special_tokens: bool = True
) -> tuple[IncrementalDetokenizer, list[str]]:
    """Push ``ids`` in chunks, checking the invariants after every push; return the detokenizer and pieces.

    The prefix check runs for byte-level tokenizers only: a sentencepiece decoder turns a whole run of
    byte-fallback tokens into U+FFFDs while the run is an unfinished character, so a partial decode
    there need not be a prefix of the final one; only the end result is exact.
    """
    detok = IncrementalDetokenizer(
        tokenizer, prompt_token_ids=[1, 2, 3], skip_special_tokens=skip_special_tokens
    )
    pieces: list[str] = []
    start, sizes = 0, list(chunk_sizes) or [1]
    while start < len(ids):
        size = sizes[len(pieces) % len(sizes)]
        piece = detok.push(ids[start : start + size])
        start += size
        so_far = tokenizer.decode(ids[:start], skip_special_tokens=skip_special_tokens)
        # Everything emitted is final: it is where it will be in the full decode, U+FFFD included.
        assert so_far.startswith(detok.text) or not tokenizer.is_byte_level
        pieces.append(piece)
    pieces.append(detok.flush())
    assert "".join(pieces) == detok.text
    assert list(detok.token_ids) == list(ids)
    return detok, pieces


@pytest.fixture(scope="module")
def byte_token_ids(smollm2_tokenizer: Tokenizer) -> list[int]:
    """Tokens whose bytes are not valid UTF-8 on their own: pieces of multi-byte characters."""
    ids = []
    for token_id in range(smollm2_tokenizer.vocab_size):
        data = smollm2_tokenizer.id_to_bytes(token_id)
        try:
            data.decode()
        except UnicodeDecodeError:
            ids.append(token_id)
    return ids


def _token_ids(byte_token_ids: list[int], vocab_size: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from(byte_token_ids),  # partial UTF-8 (lead bytes, continuation bytes, fragments)
        st.integers(0, 16),  # control tokens: skipped or kept whole
        st.integers(0, vocab_size - 1),  # anything
    )


@_SETTINGS
@given(data=st.data())
def test_random_ids_stream_equals_full_decode(
    smollm2_tokenizer: Tokenizer, byte_token_ids: list[int], data: st.DataObject
) -> None:
    tok = smollm2_tokenizer
    ids = data.draw(st.lists(_token_ids(byte_token_ids, tok.vocab_size), max_size=24), label="ids")
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=5), label="chunk sizes")
    skip = data.draw(st.booleans(), label="skip_special_tokens")
    detok, pieces = stream(tok, ids, sizes, skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert detok.text == full
    offset = 0
    for piece in pieces:
        # No chunk carries a U+FFFD the full decode does not have at that very place.
        assert full[offset : offset + len(piece)] == piece
        offset += len(piece)


@_SETTINGS
@given(text=st.text(max_size=40), sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_encoded_text_streams_back_exactly(smollm2_tokenizer: Tokenizer, text: str, sizes: list[int]) -> None:
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    detok, pieces = stream(smollm2_tokenizer, ids, sizes, skip_special_tokens=False)
    full = smollm2_tokenizer.decode(ids, skip_special_tokens=False)
    assert detok.text == full
    # The vocabulary lacks a few bytes (e.g. 0xF1), so not every text survives encoding; those that do
    # must stream without a single U+FFFD.
    if full == text:
        assert all("\ufffd" not in piece for piece in pieces)


EMOJI_CJK = [
    "😀",
    "emoji 😀🎉👍🏽 done",
    "👨‍👩‍👧‍👦 family",
    "🇫🇷🇯🇵 flags",
    "日本語のテキストと中文文本",
    "mixed 中文 and 한국어 and Ελληνικά ∑∞",
    " leading spaces   and\n\nnewlines ",
]


@pytest.mark.parametrize("text", EMOJI_CJK)
def test_emoji_and_cjk_one_token_at_a_time(smollm2_tokenizer: Tokenizer, text: str) -> None:
    ids = smollm2_tokenizer.encode(text)
    detok = IncrementalDetokenizer(smollm2_tokenizer, prompt_token_ids=[])
    pieces = [detok.push([token_id]) for token_id in ids]
    assert "".join(pieces) == text == detok.text
    assert all("\ufffd" not in piece for piece in pieces)
    assert detok.flush() == ""


def test_emoji_split_over_byte_tokens_is_held_back(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    ids = tok.encode("😀")
    assert len(ids) > 1 and tok.id_to_bytes(ids[0]) != "😀".encode()  # really split over tokens
    detok = IncrementalDetokenizer(tok, prompt_token_ids=[])
    assert [detok.push([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1:]) == "😀"


def test_unfinished_character_is_flushed_as_replacement(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    ids = tok.encode("ab😀")
    detok = IncrementalDetokenizer(tok, prompt_token_ids=[])
    held = detok.push(ids[:-1])
    assert "ab".startswith(held)  # text decoded together with the partial bytes waits with them
    assert held + detok.flush() == "ab\ufffd" == tok.decode(ids[:-1]) == detok.text


def test_special_tokens(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    ids = tok.encode("Hi<|im_end|> there")
    kept = IncrementalDetokenizer(tok, [], skip_special_tokens=False)
    assert "".join(kept.push([i]) for i in ids) == "Hi<|im_end|> there"
    skipped = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    assert "".join(skipped.push([i]) for i in ids) == "Hi there"
    assert skipped.push([]) == ""


def test_window_stays_small(smollm2_tokenizer: Tokenizer) -> None:
    ids = smollm2_tokenizer.encode("word " * 200)
    detok = IncrementalDetokenizer(smollm2_tokenizer, [])
    for token_id in ids:
        detok.push([token_id])
        assert len(detok.token_ids) - detok._prefix_offset <= 2  # decodes a window, not the whole output


# -- a sentencepiece vocabulary (decoder strips the first space; byte fallback for unknown chars) ------


@pytest.mark.parametrize("text", ["the quick brown fox", " hello  world", "Zebra 中文 😀 x", "a\nb\tc"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_sentencepiece_stream(sentencepiece_tokenizer: Tokenizer, text: str, chunk: int) -> None:
    ids = sentencepiece_tokenizer.encode(text, add_special_tokens=False)
    detok, pieces = stream(sentencepiece_tokenizer, ids, [chunk])
    assert detok.text == sentencepiece_tokenizer.decode(ids)
    assert all("\ufffd" not in piece for piece in pieces)


def _byte_token(tokenizer: Tokenizer, data: bytes) -> int:
    return next(i for i in range(tokenizer.vocab_size) if tokenizer.id_to_bytes(i) == data)


def test_defaults_skip_special_tokens_and_keep_prompt(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    detok = IncrementalDetokenizer(tok, prompt_token_ids=[7, 8, 9])
    assert detok.skip_special_tokens is True
    assert list(detok.prompt_token_ids) == [7, 8, 9]
    assert "".join(detok.push([i]) for i in tok.encode("Hi<|im_end|> there")) == "Hi there"


def test_lone_continuation_byte_is_emitted_at_once(smollm2_tokenizer: Tokenizer) -> None:
    """On a byte-level tokenizer a U+FFFD that no later byte can fix is not held back."""
    detok = IncrementalDetokenizer(smollm2_tokenizer, [])
    assert detok.push([_byte_token(smollm2_tokenizer, b"\xa1")]) == "\ufffd"


def test_kept_special_token_ends_an_unfinished_character(smollm2_tokenizer: Tokenizer) -> None:
    """With special tokens kept, their bytes follow the lead byte, so the character can no longer complete."""
    tok = smollm2_tokenizer
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=False)
    assert detok.push([_byte_token(tok, "中".encode()[:1])]) == ""
    assert detok.push(tok.encode("<|im_end|>")) == "\ufffd<|im_end|>"


def test_sentencepiece_skipped_special_token_keeps_next_space(sentencepiece_tokenizer: Tokenizer) -> None:
    """A skipped token adds no text; the window must not move past it, or the next token's space is lost."""
    tok = sentencepiece_tokenizer
    ids = [
        *tok.encode("hello", add_special_tokens=False),
        tok.eos_token_id,
        *tok.encode(" world", add_special_tokens=False),
    ]
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == "hello world"
