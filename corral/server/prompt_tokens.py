"""Prompts into token ids on a worker thread, never on the engine's step thread or the event loop, and a prompt
that cannot fit the context refused after tokenizing only its head: a 5-million-token body costs milliseconds,
not seconds of everyone's time."""

from __future__ import annotations

import asyncio

from corral.engine.llm_engine import TokenizedPrompt
from corral.errors import PromptTooLongError
from corral.server.async_engine import AsyncEngine
from corral.text.tokenizer import Tokenizer

# Characters of a long prompt's head tokenized first. No byte-level BPE token of the models served here spans
# more than a few dozen characters, so a head this long of a prompt that fits holds far fewer tokens than the
# context; if it already holds more, the whole prompt does too.
HEAD_CHARS_PER_TOKEN = 8


def encode_bounded(tokenizer: Tokenizer, text: str, max_model_len: int, add_special_tokens: bool = True) -> list[int]:
    """``tokenizer.encode(text)``, or PromptTooLongError as soon as a head of ``text`` alone overflows the context.
    The head ends before a space, where byte-level pre-tokenizers split, so its tokens begin the whole text's."""
    limit = max_model_len * HEAD_CHARS_PER_TOKEN
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        if cut > 0:
            head = tokenizer.encode(text[:cut], add_special_tokens=add_special_tokens)
            if len(head) >= max_model_len:
                raise PromptTooLongError(len(head), max_model_len, counted_all=False)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


async def tokenized(engine: AsyncEngine, prompt: str | list[int]) -> TokenizedPrompt | list[int]:
    """A completions prompt as the engine takes it: text tokenized off the loop, token ids as they are."""
    if not isinstance(prompt, str) or not prompt:
        return prompt  # token ids (or an empty prompt, which the engine refuses) need no tokenizing
    inner = engine.engine
    ids = await asyncio.to_thread(encode_bounded, inner.tokenizer, prompt, inner.max_model_len)
    return TokenizedPrompt(prompt, ids)


# The fill-in-the-middle tokens of the two common spellings (StarCoder/SantaCoder's, Qwen2.5-Coder's), in
# prefix-suffix-middle order.
FIM_SPELLINGS = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))


def fim_token_ids(tokenizer: Tokenizer) -> tuple[int, int, int] | None:
    """The model's (prefix, suffix, middle) token ids, or None when its vocabulary has no such tokens."""
    for spelling in FIM_SPELLINGS:
        ids = [tokenizer.backend.token_to_id(token) for token in spelling]
        if all(i is not None for i in ids):
            return ids[0], ids[1], ids[2]
    return None


async def fill_in_middle(
    engine: AsyncEngine, prompt: str | list[int], suffix: str, fim_ids: tuple[int, int, int]
) -> TokenizedPrompt:
    """``<prefix> prompt <suffix> suffix <middle>``, with the model's ``fim_token_ids``."""
    inner = engine.engine
    prefix_id, suffix_id, middle_id = fim_ids

    def encode(text: str) -> list[int]:
        return encode_bounded(inner.tokenizer, text, inner.max_model_len, add_special_tokens=False)

    head = await asyncio.to_thread(encode, prompt) if isinstance(prompt, str) else list(prompt)
    tail = await asyncio.to_thread(encode, suffix)
    return TokenizedPrompt(prompt if isinstance(prompt, str) else None, [prefix_id, *head, suffix_id, *tail, middle_id])
