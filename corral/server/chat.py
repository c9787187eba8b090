"""POST /v1/chat/completions: the model's own chat template, then the same engine path."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi.responses import JSONResponse, StreamingResponse

from corral.outputs import CompletionOutput
from corral.sample.params import StructuredOutputsParams
from corral.server.async_engine import AsyncEngine
from corral.server.errors import APIError, error_payload, status_of
from corral.server.prompt_logprobs import prompt_logprobs_json
from corral.server.prompt_tokens import encode_bounded
from corral.server.protocol import ChatCompletionRequest, new_id
from corral.server.streams import ChunkWriter, ClientGone, DeltaTracker, add_all, final_outputs, merged, usage
from corral.server.structured import compile_off_thread, structured_outputs_of
from corral.server.tool_calls import ToolCallParser, parse_tool_calls
from corral.server.tools import (
    ToolRequest,
    prompt_messages,
    template_knows_tools,
    tool_call_grammar,
    tool_request_of,
)


def chat_prompt_ids(
    request: ChatCompletionRequest, tokenizer, tools: ToolRequest | None = None, max_model_len: int | None = None
) -> list[int]:
    """The chat's prompt tokens; with ``max_model_len``, a chat that cannot fit is refused after its head."""
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    for message in messages:  # content parts: keep the text ones
        if isinstance(message.get("content"), list):
            message["content"] = "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")
    messages, variables = prompt_messages(messages, tools, template_knows_tools(tokenizer.chat_template))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=request.add_generation_prompt, **variables)
    if max_model_len is None:
        return tokenizer.encode(text, add_special_tokens=False)
    return encode_bounded(tokenizer, text, max_model_len, add_special_tokens=False)


def logprobs_of(completion: CompletionOutput, start: int, tokenizer, num_top: int) -> dict | None:
    if completion.logprobs is None:
        return None
    content = []
    for token_id, entry in zip(completion.token_ids[start:], completion.logprobs[start:]):
        token = tokenizer.decode([token_id], skip_special_tokens=False)
        top = sorted((lp for lp in entry.values() if lp.rank <= num_top), key=lambda lp: lp.rank)
        content.append({
            "token": token, "logprob": entry[token_id].logprob, "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": lp.decoded_token, "logprob": lp.logprob, "bytes": list((lp.decoded_token or "").encode())}
                for lp in top
            ],
        })
    return {"content": content}


async def create_chat_completion(
    engine: AsyncEngine, request: ChatCompletionRequest, model_name: str, max_tokens: int | None,
    client_gone: ClientGone | None = None,
):
    tokenizer = engine.engine.tokenizer
    tools = tool_request_of(request.tools, request.tool_choice, request.parallel_tool_calls)
    # the template and the tokenizer run on a worker thread: a long chat never stalls the event loop
    prompt_ids = await asyncio.to_thread(chat_prompt_ids, request, tokenizer, tools, engine.engine.max_model_len)
    num_logprobs = (request.top_logprobs or 0) if request.logprobs else None
    params = request.sampling_params(max_tokens, num_logprobs)
    structured = structured_outputs_of(request.model_extra or {})
    if tools is not None:
        grammar = tool_call_grammar(tools, template_knows_tools(tokenizer.chat_template))
        if grammar is not None and structured is not None:
            raise APIError(400, f"{structured[0]} cannot be combined with tool_choice {tools.mode!r}", param=structured[0])
        if grammar is not None:
            structured = ("tools", StructuredOutputsParams(grammar=grammar))
    compiled = None
    if structured is not None:
        compiled = await compile_off_thread(engine, *structured)
        params = replace(params, structured_outputs=structured[1])
    request_id = new_id("chatcmpl")
    streams = await add_all(engine, [prompt_ids], params, request_id, compiled, request.priority)
    created = int(time.time())
    if request.stream:
        return StreamingResponse(
            _stream(streams, request, request_id, created, model_name, tokenizer, tools), media_type="text/event-stream"
        )
    outputs = await final_outputs(streams, client_gone and client_gone())
    choices = [
        {"index": c.index, "message": _message(c.text, tools), "finish_reason": c.finish_reason,
         "stop_reason": c.stop_reason, "logprobs": logprobs_of(c, 0, tokenizer, num_logprobs or 0)}
        for c in outputs[0].outputs
    ]
    for choice in choices:
        if choice["message"].get("tool_calls") and choice["finish_reason"] == "stop":
            choice["finish_reason"] = "tool_calls"
    body = {
        "id": request_id, "object": "chat.completion", "created": created, "model": model_name,
        "choices": choices, "usage": usage(outputs),
    }
    if request.prompt_logprobs is not None:  # vLLM puts the prompt's on the response, beside the choices
        body["prompt_logprobs"] = prompt_logprobs_json(outputs[0].prompt_logprobs)
    return JSONResponse(body)


def _message(text: str, tools: ToolRequest | None) -> dict:
    if tools is None:
        return {"role": "assistant", "content": text}
    content, calls = parse_tool_calls(text)
    return {"role": "assistant", "content": content} | ({"tool_calls": [c.to_dict() for c in calls]} if calls else {})


async def _stream(streams, request, request_id, created, model_name, tokenizer, tools) -> AsyncIterator[str]:
    chunk = ChunkWriter(request_id, "chat.completion.chunk", created, model_name)

    trackers: dict[int, DeltaTracker] = {}
    parsers: dict[int, ToolCallParser] = {}
    final = None
    try:
        for index in range(request.n):
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                          "logprobs": None}])
        prompt_logprobs_sent = request.prompt_logprobs is None
        async for _, output in merged(streams):
            final = output
            # the prompt's logprobs go out with the first content chunk (they come with the first child's token)
            if not prompt_logprobs_sent and output.prompt_logprobs is None:
                continue
            for c in output.outputs:
                tracker = trackers.setdefault(c.index, DeltaTracker())
                if tracker.finished:
                    continue
                text, tokens, start = tracker.delta(c)
                if not text and not tokens and not c.finished:
                    continue
                tracker.finished = c.finished
                logprobs = logprobs_of(c, start, tokenizer, request.top_logprobs or 0)
                extra = None
                if not prompt_logprobs_sent:
                    extra, prompt_logprobs_sent = {"prompt_logprobs": prompt_logprobs_json(output.prompt_logprobs)}, True
                if tools is None:
                    yield chunk([{"index": c.index, "delta": {"content": text} if text else {},
                                  "finish_reason": c.finish_reason, "stop_reason": c.stop_reason, "logprobs": logprobs}],
                                extra=extra)
                    continue
                parser = parsers.setdefault(c.index, ToolCallParser())
                deltas = parser.feed(text) + (parser.finish() if c.finished else [])
                if not deltas and not c.finished and logprobs is None and extra is None:
                    continue  # text held back (it may open a call)
                finish_reason = "tool_calls" if parser.calls and c.finish_reason == "stop" else c.finish_reason
                for i, delta in enumerate(deltas or [{}]):
                    last = i == max(len(deltas), 1) - 1
                    yield chunk([{"index": c.index, "delta": delta, "finish_reason": finish_reason if last else None,
                                  "stop_reason": c.stop_reason if last else None,
                                  "logprobs": logprobs if i == 0 else None}], extra=extra if i == 0 else None)
        if request.include_usage and final is not None:
            yield chunk([], usage([final]))
    except Exception as exc:
        yield f"data: {json.dumps(error_payload(status_of(exc), str(exc)))}\n\n"
    yield "data: [DONE]\n\n"
