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


def encode_bounded(tokenizer: Tokenizer, text: str, max_model_len: int) -> list[int]:
    """``tokenizer.encode(text)``, or PromptTooLongError as soon as a head of ``text`` alone overflows the context.
    The head ends before a space, where byte-level pre-tokenizers split, so its tokens begin the whole text's."""
    limit = max_model_len * HEAD_CHARS_PER_TOKEN
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        if cut > 0:
            head = tokenizer.encode(text[:cut])
            if len(head) >= max_model_len:
                raise PromptTooLongError(len(head), max_model_len, counted_all=False)
    return tokenizer.encode(text)


async def tokenized(engine: AsyncEngine, prompt: str | list[int]) -> TokenizedPrompt | list[int]:
    """A completions prompt as the engine takes it: text tokenized off the loop, token ids as they are."""
    if not isinstance(prompt, str) or not prompt:
        return prompt  # token ids (or an empty prompt, which the engine refuses) need no tokenizing
    inner = engine.engine
    ids = await asyncio.to_thread(encode_bounded, inner.tokenizer, prompt, inner.max_model_len)
    return TokenizedPrompt(prompt, ids)
