"""POST /v1/completions."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi.responses import JSONResponse, StreamingResponse

from corral.errors import InvalidRequestError
from corral.outputs import CompletionOutput, RequestOutput
from corral.sample.params import SamplingParams
from corral.server.api_error import APIError
from corral.server.async_engine import AsyncEngine
from corral.server.errors import error_payload, status_of
from corral.server.prompt_logprobs import echoed_logprobs, joined, prompt_logprobs_json
from corral.server.prompt_tokens import fill_in_middle, fim_token_ids, tokenized
from corral.server.protocol import CompletionRequest, new_id
from corral.server.streams import ChunkWriter, ClientGone, DeltaTracker, add_all, final_outputs, merged, usage
from corral.server.structured import compile_off_thread, structured_outputs_of


def prompts_of(request: CompletionRequest) -> list[str | list[int]]:
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]  # one prompt as token ids
    return list(prompt)


def logprobs_of(completion: CompletionOutput, start: int, tokenizer, text_start: int) -> dict | None:
    """The completions API's logprobs object for tokens ``start..`` of a choice; ``text_start`` is where the
    first of them begins in the choice's returned text (echoed prompt included), and each next token's
    offset adds the length of the one before (vLLM's rule)."""
    if completion.logprobs is None:
        return None
    token_ids = completion.token_ids[start:]
    entries = completion.logprobs[start : start + len(token_ids)]
    tokens = [tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=text_start)) if tokens else []
    return {
        "tokens": tokens,
        "token_logprobs": [e[t].logprob for t, e in zip(token_ids, entries)],
        "top_logprobs": [{lp.decoded_token: lp.logprob for lp in e.values()} for e in entries],
        "text_offset": offsets,
    }


def echoed(request: CompletionRequest, output: RequestOutput, tokenizer) -> str:
    """The prompt text to put before a choice's text when ``echo`` is set."""
    if not request.echo:
        return ""
    return output.prompt if output.prompt is not None else tokenizer.decode(output.prompt_token_ids)


def completion_params(request: CompletionRequest, max_tokens: int | None) -> SamplingParams:
    """The engine's params. ``max_tokens: 0`` (echo only) samples one token that is then dropped, as vLLM does;
    echo with logprobs asks for the prompt's logprobs too."""
    if max_tokens == 0 and not request.echo:
        raise InvalidRequestError("max_tokens 0 is only valid with echo (which returns the prompt alone)").with_param(
            "max_tokens")
    params = request.sampling_params(1 if max_tokens == 0 else max_tokens or 16, request.logprobs)
    if request.echo and request.logprobs is not None:
        params = replace(params, prompt_logprobs=max(request.logprobs, params.prompt_logprobs or 0))
    return params


def without_generation(output: RequestOutput) -> RequestOutput:
    """``max_tokens: 0`` with echo: the output as if nothing was generated (the one sampled token dropped)."""
    completions = [
        replace(c, text="", token_ids=[], logprobs=None if c.logprobs is None else [], finish_reason="length",
                stop_reason=None)
        for c in output.outputs
    ]
    return replace(output, outputs=completions)


def choice_logprobs(request: CompletionRequest, output: RequestOutput, completion_part: dict | None, tokenizer) -> dict | None:
    """The choice's logprobs object, the echoed prompt's tokens first when echo and logprobs are both set."""
    if not request.echo or request.logprobs is None:
        return completion_part
    return joined(echoed_logprobs(output, tokenizer), completion_part)


async def create_completion(
    engine: AsyncEngine, request: CompletionRequest, model_name: str, max_tokens: int | None,
    client_gone: ClientGone | None = None,
):
    prompts = prompts_of(request)
    if not prompts:
        raise InvalidRequestError("prompt must not be empty")
    params = completion_params(request, max_tokens)
    structured = structured_outputs_of(request.model_extra or {})
    compiled = None
    if structured is not None:
        compiled = await compile_off_thread(engine, *structured)
        params = replace(params, structured_outputs=structured[1])
    request_id = new_id("cmpl")
    if request.suffix:
        fim_ids = fim_token_ids(engine.engine.tokenizer)
        if fim_ids is None:
            raise APIError(400, "suffix needs a model with fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, "
                           "<fim_middle>); this one has none", param="suffix")
        engine_prompts = [await fill_in_middle(engine, p, request.suffix, fim_ids) for p in prompts]
    else:
        engine_prompts = [await tokenized(engine, p) for p in prompts]
    streams = await add_all(engine, engine_prompts, params, request_id, compiled, request.priority)
    created = int(time.time())
    tokenizer = engine.engine.tokenizer
    if request.stream:
        body = _stream(streams, request, request_id, created, model_name, tokenizer, echo_only=max_tokens == 0)
        return StreamingResponse(body, media_type="text/event-stream")
    outputs = await final_outputs(streams, client_gone and client_gone())
    if max_tokens == 0:
        outputs = [without_generation(o) for o in outputs]
    choices = []
    for prompt_index, output in enumerate(outputs):
        prefix = echoed(request, output, tokenizer)
        for c in output.outputs:
            choice = {
                "index": prompt_index * params.n + c.index, "text": prefix + c.text, "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
                "logprobs": choice_logprobs(request, output, logprobs_of(c, 0, tokenizer, len(prefix)), tokenizer),
            }
            if request.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(output.prompt_logprobs)
            choices.append(choice)
    return JSONResponse({
        "id": request_id, "object": "text_completion", "created": created, "model": model_name,
        "choices": choices, "usage": usage(outputs),
    })


async def _stream(
    streams, request: CompletionRequest, request_id, created, model_name, tokenizer, echo_only: bool
) -> AsyncIterator[str]:
    n = request.n
    # The prompt's logprobs go out with each choice's first chunk; they come with the first child's first token,
    # so other children wait for them (a child reusing the cached prompt may sample first).
    wants_prompt_logprobs = request.prompt_logprobs is not None or (request.echo and request.logprobs is not None)
    trackers: dict[tuple[int, int], DeltaTracker] = {}
    token_offset: dict[tuple[int, int], int] = {}  # (prompt, choice) -> where its next token's text starts
    finals = {}

    chunk = ChunkWriter(request_id, "text_completion", created, model_name)

    try:
        async for prompt_index, output in merged(streams):
            output = without_generation(output) if echo_only else output
            finals[prompt_index] = output
            if wants_prompt_logprobs and output.prompt_logprobs is None:
                continue
            for c in output.outputs:
                tracker = trackers.setdefault((prompt_index, c.index), DeltaTracker())
                if tracker.finished:
                    continue
                text, tokens, start = tracker.delta(c)
                if not text and not tokens and not c.finished:
                    continue
                key = (prompt_index, c.index)
                first = start == 0 and not tracker.echoed
                if first:
                    prefix = echoed(request, output, tokenizer)
                    text, tracker.echoed, token_offset[key] = prefix + text, True, len(prefix)
                logprobs = logprobs_of(c, start, tokenizer, token_offset.get(key, 0))
                if logprobs is not None:
                    token_offset[key] = token_offset.get(key, 0) + sum(map(len, logprobs["tokens"]))
                if first:
                    logprobs = choice_logprobs(request, output, logprobs, tokenizer)
                tracker.finished = c.finished
                choice = {
                    "index": prompt_index * n + c.index, "text": text, "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason, "logprobs": logprobs,
                }
                if request.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = prompt_logprobs_json(output.prompt_logprobs) if first else None
                yield chunk([choice])
        if request.include_usage:
            yield chunk([], usage(list(finals.values())))
    except Exception as exc:  # headers are sent: report in-band
        yield f"data: {json.dumps(error_payload(status_of(exc), str(exc)))}\n\n"
    yield "data: [DONE]\n\n"
