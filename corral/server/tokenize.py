"""POST /tokenize and /detokenize, and GET /tokenizer_info, in vLLM's shapes: the token ids a prompt (or a chat,
through the model's template) becomes, the text of token ids, and the special tokens and chat template, so clients
need not load the tokenizer themselves (lm-evaluation-harness's remote tokenizer reads all three)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from corral.server.chat import chat_prompt_ids
from corral.server.errors import APIError
from corral.server.protocol import ChatCompletionRequest, ChatMessage
from corral.text.tokenizer import Tokenizer


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True  # for a prompt: the model's BOS/EOS rule
    add_generation_prompt: bool = True  # for messages


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


def tokenize(request: TokenizeRequest, tokenizer: Tokenizer, max_model_len: int) -> dict:
    if (request.prompt is None) == (request.messages is None):
        raise APIError(400, "give exactly one of prompt or messages", param="prompt")
    if request.prompt is not None:
        ids = tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)
    else:
        chat = ChatCompletionRequest(model="", messages=request.messages,
                                     add_generation_prompt=request.add_generation_prompt)
        ids = chat_prompt_ids(chat, tokenizer)
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids}


def detokenize(request: DetokenizeRequest, tokenizer: Tokenizer) -> dict:
    outside = [t for t in request.tokens if not 0 <= t < tokenizer.vocab_size]
    if outside:
        raise APIError(400, f"token ids {outside[:5]} are outside the vocabulary of {tokenizer.vocab_size}",
                       param="tokens")
    return {"prompt": tokenizer.decode(request.tokens, skip_special_tokens=False)}


def tokenizer_info(tokenizer: Tokenizer, max_model_len: int) -> dict:
    return {
        "tokenizer_class": "corral.text.Tokenizer", "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
        "pad_token": None, "chat_template": tokenizer.chat_template, "model_max_length": max_model_len,
    }
