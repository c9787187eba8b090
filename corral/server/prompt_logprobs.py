"""The prompt's logprobs on the wire: vLLM's ``prompt_logprobs`` list, and the prompt part of the completions
API's legacy logprobs object when ``echo`` is set (what lm-evaluation-harness scores loglikelihoods with)."""

from __future__ import annotations

import itertools

from corral.outputs import PromptLogprobs, RequestOutput
from corral.text.tokenizer import Tokenizer


def prompt_logprobs_json(prompt_logprobs: PromptLogprobs | None) -> list | None:
    """vLLM's shape: None for the first prompt token, then ``{token id: {logprob, rank, decoded_token}}``."""
    if prompt_logprobs is None:
        return None
    return [
        None if entry is None else {
            str(token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
            for token_id, lp in entry.items()
        }
        for entry in prompt_logprobs
    ]


def echoed_logprobs(output: RequestOutput, tokenizer: Tokenizer) -> dict:
    """The legacy logprobs object of the prompt tokens: ``null`` logprob and top logprobs for the first (nothing
    scores it), then the prompt token's logprob and ``{decoded token: logprob}`` of it and the top-N. Text offsets
    start at 0 and each adds the length of the token before (vLLM's rule)."""
    assert output.prompt_logprobs is not None, "echo with logprobs asks the engine for prompt_logprobs"
    token_ids = output.prompt_token_ids
    tokens = [tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]
    entries = output.prompt_logprobs
    return {
        "tokens": tokens,
        "token_logprobs": [None if e is None else e[t].logprob for t, e in zip(token_ids, entries, strict=True)],
        "top_logprobs": [None if e is None else {lp.decoded_token: lp.logprob for lp in e.values()} for e in entries],
        "text_offset": list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=0)),
    }


def joined(prompt_part: dict, completion_part: dict | None) -> dict:
    """One legacy logprobs object: the echoed prompt's tokens, then the completion's."""
    if completion_part is None:
        return prompt_part
    return {key: prompt_part[key] + completion_part[key] for key in prompt_part}
