"""Per-group token limits (issue 24, item 6): ``max_tokens_cap`` clamps a request's output budget (never a
refusal: the replica then stops at the cap with ``finish_reason: "length"`` as usual), ``default_max_tokens``
fills in a missing one, and ``max_prompt_chars`` bounds the prompt (over it: a 400 naming the limit, or the
group's fallback). The whole request's time limit is the group's ``timeouts.request_s``, which already exists.
The clamp runs before the cache plan, so the cache key is that of the body forwarded."""

from __future__ import annotations

from corral.gateway.config import GroupConfig
from corral.gateway.errors import GatewayError
from corral.gateway.routing import prompt_text

# OpenAI's newer chat field first: a chat request may send either.
_BUDGET_FIELDS = ("max_completion_tokens", "max_tokens")


def prompt_chars(body: dict) -> int:
    """The prompt's length in characters: every completions prompt of a batch, or every chat message."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return sum(len(p) for p in prompt)
    return len(prompt_text(body))


def prompt_too_long(body: dict, config: GroupConfig) -> bool:
    return config.max_prompt_chars is not None and prompt_chars(body) > config.max_prompt_chars


def prompt_error(body: dict, group: str, config: GroupConfig) -> GatewayError:
    return GatewayError(400, f"the prompt has {prompt_chars(body)} characters, over the limit of "
                             f"{config.max_prompt_chars} (max_prompt_chars) of model {group!r}",
                        param="messages" if "messages" in body else "prompt", code="context_length_exceeded")


def clamp_max_tokens(body: dict, config: GroupConfig, tenant_cap: int | None = None) -> dict:
    """The body to forward: its output budget clamped to the cap (the group's or the tenant's, whichever is
    smaller), or the default (else the cap; never over it) when it sent none. A new dict when it changes; a
    budget that is not a positive integer is left for the replica to refuse."""
    cap, default = config.max_tokens_cap, config.default_max_tokens
    if tenant_cap is not None:
        cap = tenant_cap if cap is None else min(cap, tenant_cap)
        default = None if default is None else min(default, cap)
    if cap is None and default is None:
        return body
    present = [name for name in _BUDGET_FIELDS if body.get(name) is not None]
    if not present:
        fill = default if default is not None else cap
        return {**body, "max_tokens": fill}
    if cap is None:
        return body
    clamped = dict(body)
    for name in present:
        value = body[name]
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            clamped[name] = cap
    return clamped
