"""The guardrails on the request path (docs/guardrails.md#using-it-in-the-gateway): each tenant's policy, or the
gateway-wide one, and after it the model group's own (docs/guardrails.md#per-group-policies), compiled when the
config is loaded (at start and at each reload; a tenant's with a group's at their first request); a request's
input checked before the cache and routing (masked messages forwarded, a denial answered 400 ``content_policy``
with nothing sent upstream); a body's answer checked choice by choice before it is returned. A stream's answer is
checked event by event by guard_stream.py, through stream_tap.py. Every verdict is counted in
``corral_gateway_guardrail_actions_total`` and goes in the request's audit record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response

from corral.gateway.config import GatewayConfig, GatewayConfigError
from corral.gateway.errors import GatewayError
from corral.gateway.guard_stream import FUNCTION_CALL, CallKey, StreamGuard, text_slot
from corral.gateway.guardrails.policy import (
    GuardrailConfigError,
    GuardrailPolicy,
    InjectionCheck,
    JsonOutputCheck,
    LeakageCheck,
    PiiCheck,
    SecretsCheck,
)
from corral.gateway.guardrails.verdict import Verdict
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.relay import RelayResponse, RequestContext
from corral.gateway.routing import RouteRequest, prompt_text

if TYPE_CHECKING:
    from corral.gateway.guardrails.pipeline import Guardrails

CHAT_PATH = "/v1/chat/completions"
# Request fields whose answer would carry the tokens of the answer outside its text, unchecked.
_TOKEN_OUTPUT_FIELDS = ("logprobs", "top_logprobs", "prompt_logprobs")
_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy's Guardrails, and whether it has checks for each side (a side without any costs nothing)."""

    guardrails: Guardrails
    checks_input: bool
    checks_output: bool

    @classmethod
    def compile(cls, policy: GuardrailPolicy, *more: tuple[str, GuardrailPolicy]) -> CompiledPolicy | None:
        """None for a policy without checks (a tenant's ``checks: []`` opts out of the gateway-wide policy).
        ``more``: a group's policy, as ``(group name, policy)``, whose checks run after the policy's."""
        checks = [*policy.checks, *(check for _, layer in more for check in layer.checks)]
        checks_input = any(isinstance(check, InjectionCheck) or (isinstance(check, PiiCheck | SecretsCheck)
                                                                 and "input" in check.stages)
                           for check in checks)
        checks_output = any(isinstance(check, LeakageCheck | JsonOutputCheck) or (
            isinstance(check, PiiCheck | SecretsCheck) and "output" in check.stages) for check in checks)
        if not (checks_input or checks_output):
            return None
        # Imported here: a gateway without guardrails never loads the checks' patterns and rules (start-up time).
        from corral.gateway.guardrails.pipeline import Guardrails

        return cls(Guardrails(policy, *more), checks_input, checks_output)


class GatewayGuardrails:
    """The policies of one gateway: the tenants' own, the gateway-wide default and the model groups' own. A
    request's policy is its tenant's (else the default), then its group's checks after them: a group's checks are
    about where its backends send the data, so a tenant's ``checks: []`` does not remove them."""

    def __init__(self, default: GuardrailPolicy | None, by_tenant: dict[str, GuardrailPolicy],
                 by_group: dict[str, GuardrailPolicy], metrics: GatewayMetrics):
        self.default, self.by_tenant, self.by_group, self.metrics = default, by_tenant, by_group, metrics
        # Compiled by (tenant with a policy of its own, else None; group with a policy, else None).
        self._compiled: dict[tuple[str | None, str | None], CompiledPolicy | None] = {}

    @classmethod
    def from_config(cls, config: GatewayConfig, metrics: GatewayMetrics) -> GatewayGuardrails | None:
        """None when no policy is configured anywhere (the request path then checks nothing). Each policy is
        compiled here, alone, so that a bad one is a GatewayConfigError naming its key."""
        by_tenant = {name: tenant.guardrails for name, tenant in config.auth.tenants.items()
                     if tenant.guardrails is not None}
        by_group = {name: group.guardrails for name, group in config.groups.items() if group.guardrails is not None}
        guardrails = cls(config.guardrails, by_tenant, by_group, metrics)
        compiled = [guardrails._compile_checked(None, None, "guardrails")]
        compiled += [guardrails._compile_checked(name, None, f"auth.tenants.{name}.guardrails") for name in by_tenant]
        compiled += [guardrails._compile_checked(None, name, f"groups.{name}.guardrails") for name in by_group]
        return guardrails if any(compiled) else None

    def for_request(self, tenant: str | None, group: str | None = None) -> RequestGuard | None:
        """The guard of a request of ``tenant`` (None: no tenant) to ``group``; None when no check applies."""
        key = (tenant if tenant in self.by_tenant else None, group if group in self.by_group else None)
        if key not in self._compiled:
            self._compiled[key] = self._compile(*key)
        policy = self._compiled[key]
        return None if policy is None else RequestGuard(policy, self.metrics)

    def _compile(self, tenant: str | None, group: str | None) -> CompiledPolicy | None:
        base = self.by_tenant[tenant] if tenant is not None else self.default
        layers = [(group, self.by_group[group])] if group is not None else []
        return CompiledPolicy.compile(base or GuardrailPolicy(), *layers)

    def _compile_checked(self, tenant: str | None, group: str | None, key: str) -> CompiledPolicy | None:
        try:
            self._compiled[(tenant, group)] = self._compile(tenant, group)
        except (GuardrailConfigError, ValueError, OSError) as error:
            raise GatewayConfigError(f"{key}: {error}") from None
        return self._compiled[(tenant, group)]


@dataclass
class RequestGuard:
    """One request's policy and what it decided: shared by the copies of its context that fallback makes."""

    policy: CompiledPolicy
    metrics: GatewayMetrics
    input_verdict: Verdict | None = None
    output_verdicts: dict[int, Verdict] = field(default_factory=dict)  # by choice index
    # By choice, then by tool call index (FUNCTION_CALL: the legacy function_call's arguments).
    tool_call_verdicts: dict[int, dict[CallKey, Verdict]] = field(default_factory=dict)

    def count(self, verdict: Verdict) -> None:
        for check, action in verdict.action_counts():
            self.metrics.guardrail_actions.labels(check=check, action=action).inc()

    def record_output(self, index: int, verdict: Verdict, tool_calls: dict[CallKey, Verdict] | None = None) -> None:
        """A choice's verdicts: its text's and its tool calls' arguments'; a check that acted on any of them is
        counted once for the choice."""
        self.output_verdicts[index] = verdict
        self.tool_call_verdicts[index] = tool_calls or {}
        acted = verdict.action_counts()
        for call in (tool_calls or {}).values():
            acted += [pair for pair in call.action_counts() if pair not in acted]
        for check, action in acted:
            self.metrics.guardrail_actions.labels(check=check, action=action).inc()

    def to_record(self) -> dict[str, Any]:
        """The audit record's ``guardrails``: the input verdict, and each choice's output verdicts (its text's, then
        its tool calls', each result with its ``tool_call`` index, or ``function_call: true``)."""
        record: dict[str, Any] = {}
        if self.input_verdict is not None:
            record["input"] = self.input_verdict.to_record()
        if self.output_verdicts:
            record["output"] = [
                *({**result, "choice": index} for index in sorted(self.output_verdicts)
                  for result in self.output_verdicts[index].to_record()),
                *({**result, "choice": index, **_call_field(number)} for index in sorted(self.tool_call_verdicts)
                  for number, verdict in sorted(self.tool_call_verdicts[index].items(), key=_call_order)
                  for result in verdict.to_record())]
        return record

    def check_request(self, ctx: RequestContext) -> None:
        """Runs the input checks on the request's messages (a completion's prompts as user messages) and puts
        the masked body in ``ctx``; raises ContentPolicyError on a denial, GatewayError for what it cannot check."""
        body = ctx.body
        if self.policy.checks_output:
            for name in _TOKEN_OUTPUT_FIELDS:
                if body.get(name) not in (None, False):
                    raise GatewayError(400, f"`{name}` is not available under this gateway's content policy: it "
                                            "would return the answer's tokens unchecked", param=name)
        if not self.policy.checks_input:
            return
        if ctx.path == CHAT_PATH:
            messages = body.get("messages")
            if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
                raise GatewayError(400, "`messages` must be a list of message objects", param="messages")
            result = self.policy.guardrails.check_input(messages)
            forwarded = {**body, "messages": result.messages}
        else:
            prompts, single = _text_prompts(body.get("prompt"))
            result = self.policy.guardrails.check_input([{"role": "user", "content": text} for text in prompts])
            masked = [message["content"] for message in result.messages]
            forwarded = {**body, "prompt": masked[0] if single else masked}
        self.input_verdict = result.verdict
        self.count(result.verdict)
        result.verdict.raise_if_denied()
        if result.verdict.masked:
            ctx.body = forwarded
            ctx.route = RouteRequest(prompt_text(forwarded), ctx.route.session_id)

    def check_response(self, ctx: RequestContext, response: Response) -> Response:
        """A body's answer with each choice's text checked and masked (ContentPolicyError on a denial); a stream
        gets its StreamGuard, which its tap applies event by event."""
        if not self.policy.checks_output:
            return response
        system_prompt, response_format = output_context(ctx.body)
        if isinstance(response, RelayResponse):
            response.stream_guard = StreamGuard(self, system_prompt, response_format)
            return response
        if response.status_code != 200:
            return response
        try:
            answer = json.loads(bytes(response.body))
        except (ValueError, UnicodeDecodeError):
            raise GatewayError(502, "the backend's answer is not JSON, so the content policy cannot check it",
                               code="content_policy_unchecked") from None
        masked = False
        choices = answer.get("choices") if isinstance(answer, dict) else None
        for position, choice in enumerate(choices if isinstance(choices, list) else ()):
            masked = self._check_choice(choice, position, system_prompt, response_format) or masked
        if masked:
            response.body = json.dumps(answer).encode()
            response.headers["content-length"] = str(len(response.body))
        return response


    def _check_choice(self, choice: Any, position: int, system_prompt: str | None,
                      response_format: dict[str, Any] | None) -> bool:
        """Checks one choice of a body's answer in place: its text, and each tool call's arguments (a JSON text),
        the legacy ``function_call``'s too; whether anything was masked. Raises ContentPolicyError on a denial."""
        holder, key = text_slot(choice, streamed=False)
        calls = _argument_slots(choice)
        if holder is None and not calls:
            return False
        guardrails = self.policy.guardrails
        # A choice of tool calls alone has no text to check (an empty text is not the JSON a request asked for).
        verdict, masked = Verdict(), False
        if holder is not None:
            result = guardrails.check_output(holder[key], system_prompt, response_format)
            verdict, masked, holder[key] = result.verdict, result.text != holder[key], result.text
        checked = {number: guardrails.check_arguments(function["arguments"], system_prompt)
                   for number, function in calls.items()}
        index = choice.get("index", position)
        self.record_output(index if isinstance(index, int) else position, verdict,
                           {number: call.verdict for number, call in checked.items()})
        for each in (verdict, *(call.verdict for call in checked.values())):
            each.raise_if_denied()
        for number, call in checked.items():
            masked = masked or call.text != calls[number]["arguments"]
            calls[number]["arguments"] = call.text
        return masked


def _argument_slots(choice: Any) -> dict[CallKey, dict[str, Any]]:
    """A body's chat choice's tool calls that have arguments as a string: their ``function``, by position; and
    the legacy ``message.function_call`` (OpenAI's deprecated form of one call) under FUNCTION_CALL."""
    message = choice.get("message") if isinstance(choice, dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    slots: dict[CallKey, dict[str, Any]] = {}
    for number, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            slots[number] = function
    legacy = message.get("function_call") if isinstance(message, dict) else None
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        slots[FUNCTION_CALL] = legacy
    return slots


def _call_field(number: CallKey) -> dict[str, Any]:
    return {"function_call": True} if number == FUNCTION_CALL else {"tool_call": number}


def _call_order(item: tuple[CallKey, Verdict]) -> tuple[bool, int]:
    return item[0] == FUNCTION_CALL, item[0] if isinstance(item[0], int) else 0


def _text_prompts(prompt: Any) -> tuple[list[str], bool]:
    """A completion's prompt as texts, and whether it was a single string. Token ids cannot be read."""
    if isinstance(prompt, str):
        return [prompt], True
    if isinstance(prompt, list) and prompt and all(isinstance(text, str) for text in prompt):
        return prompt, False
    raise GatewayError(400, "`prompt` must be a string or a list of strings under this gateway's content policy "
                            "(token ids cannot be checked)", param="prompt")


def output_context(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The request's system prompt (its system and developer messages' texts) and ``response_format``."""
    texts = []
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") in _SYSTEM_ROLES:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [part["text"] for part in content if isinstance(part, dict)
                          and isinstance(part.get("text"), str)]
    response_format = body.get("response_format")
    return "\n".join(texts) or None, response_format if isinstance(response_format, dict) else None
