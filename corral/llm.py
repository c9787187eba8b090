"""The offline API, shaped like vLLM's: ``LLM(...).generate(prompts, SamplingParams(...))``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.progress import Progress

from corral.engine.llm_engine import LLMEngine, PromptType
from corral.errors import InvalidRequestError
from corral.outputs import RequestOutput
from corral.runtime import EngineArgs, build_engine
from corral.sample.params import SamplingParams


class LLM:
    """An engine for offline batch inference.

    ``LLM(model=None)`` loads the default model. Keyword arguments are ``EngineArgs`` fields
    (``dtype``, ``kv_cache_memory``, ``enable_prefix_caching``, ``max_model_len``, ...).
    """

    def __init__(self, model: str | None = None, **engine_args: Any):
        self.engine: LLMEngine = build_engine(EngineArgs(model=model, **engine_args))

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate completions for each prompt (text or token ids); outputs come back in prompt order."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _broadcast(sampling_params or SamplingParams(), len(prompt_list), "sampling_params")
        priorities = _broadcast(0, len(prompt_list), "priority") if priority is None else list(priority)
        if len(priorities) != len(prompt_list):
            raise InvalidRequestError("priority must have one entry per prompt")

        request_ids = []
        try:
            for prompt, params, prio in zip(prompt_list, params_list, priorities, strict=True):
                request_id = self.engine.next_request_id()
                self.engine.add_request(request_id, prompt, params, priority=prio)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:  # all or nothing: no request is left behind in the engine
                self.engine.abort_request(request_id)
            raise
        return self._run(request_ids, show_progress=use_tqdm and len(request_ids) > 1)

    def chat(
        self,
        messages: Sequence[dict[str, str]] | Sequence[Sequence[dict[str, str]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or a list of them) and generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.engine.tokenizer
        prompts = [
            tokenizer.encode(
                tokenizer.apply_chat_template(list(c), add_generation_prompt=add_generation_prompt),
                add_special_tokens=False,
            )
            for c in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, request_ids: list[str], show_progress: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        wanted = set(request_ids)
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("Generating", total=len(request_ids))
            try:
                while self.engine.has_unfinished_requests():
                    for output in self.engine.step():
                        if output.finished and output.request_id in wanted:
                            finished[output.request_id] = output
                            progress.advance(task)
            except BaseException:
                for request_id in request_ids:
                    self.engine.abort_request(request_id)
                raise
        return [finished[request_id] for request_id in request_ids]


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) for p in prompts):
        return [prompts]  # a single prompt given as token ids
    return prompts


def _broadcast(value: Any, count: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise InvalidRequestError(f"{name} must be a single value or one per prompt")
        return list(value)
    return [value] * count
