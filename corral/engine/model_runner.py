"""ModelRunner: executes one scheduled step on the model and samples the next tokens (or, with speculative
decoding, checks the step's draft tokens and keeps the accepted ones)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import torch

from corral.engine.batch import ModelRunnerOutput, SampledToken, ScheduledRequest, SchedulerOutput
from corral.engine.input_builder import ModelInputs, build_model_inputs
from corral.engine.prompt_logprobs import compute_prompt_logprobs
from corral.engine.proposer import Draft, FeatureObserver, Proposer
from corral.engine.request import Request
from corral.engine.token_masks import allowed_token_masks
from corral.layers.attention.backend import AttentionBackend
from corral.sample.metadata import build_sampling_metadata
from corral.sample.rejection import RejectionSampler
from corral.sample.sampler import Sampler
from corral.structured.cache import StructuredOutputStats


class ModelRunner:
    """Owns the model, its KV caches, the attention backend, the samplers, per-request RNGs and the
    speculative proposer (if any) with the draft distributions it last proposed from. A ``fallback_proposer``
    drafts for the requests the proposer had nothing for (a draft model behind an n-gram lookup)."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[torch.Tensor],
        backend: AttentionBackend,
        block_size: int,
        vocab_size: int,
        device: torch.device,
        proposer: Proposer | None = None,
        num_speculative_tokens: int = 0,
        fallback_proposer: Proposer | None = None,
        structured_stats: StructuredOutputStats | None = None,
    ):
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.sampler = Sampler()
        self.rejection_sampler = RejectionSampler()
        self.proposer = proposer
        self.fallback_proposer = fallback_proposer
        self.num_speculative_tokens = num_speculative_tokens
        self._feature_observers = [p for p in (proposer, fallback_proposer) if isinstance(p, FeatureObserver)]
        self._generators: dict[str, torch.Generator] = {}
        self._draft_probs: dict[str, torch.Tensor] = {}
        self.structured_stats = structured_stats  # where the per-step grammar mask times go

    def clear_drafts(self) -> None:
        """Forget the last step's draft distributions: a new step's proposals begin."""
        self._draft_probs = {}

    @torch.inference_mode()
    def propose(self, requests: Sequence[Request], max_num_tokens: Sequence[int], fallback: bool = False) -> list[Draft]:
        """Drafts for each request (see ``Proposer``; ``fallback``: the fallback proposer's), remembering their
        distributions for the check beside the others of the step."""
        proposer = self.fallback_proposer if fallback else self.proposer
        assert proposer is not None
        drafts = proposer.propose(requests, max_num_tokens)
        for request, draft in zip(requests, drafts, strict=True):
            if draft.probs is not None:
                self._draft_probs[request.request_id] = draft.probs
        return drafts

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        """The proposers forget these requests (a draft model's KV blocks)."""
        for proposer in (self.proposer, self.fallback_proposer):
            if proposer is not None:
                proposer.remove_requests(request_ids)

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        for request_id in scheduler_output.finished_request_ids:
            self._generators.pop(request_id, None)
        if scheduler_output.is_empty:
            return ModelRunnerOutput()

        inputs = build_model_inputs(scheduler_output, self.block_size, self.device)
        hidden = self.model(
            inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn_metadata, self.backend
        )
        prompt_logprobs = compute_prompt_logprobs(self.model, hidden, inputs.prompt_logprob_rows)
        output = self._sample(inputs, hidden)
        output.prompt_logprobs = prompt_logprobs
        return output

    def _sample(self, inputs: ModelInputs, hidden: torch.Tensor) -> ModelRunnerOutput:
        if not inputs.sampling_requests:
            return ModelRunnerOutput()
        rows = hidden[inputs.logits_indices]
        logits = self.model.compute_logits(rows).float()  # [num_logits_rows, vocab]
        if any(s.spec_token_ids for s in inputs.sampling_requests):
            return self._verify(inputs.sampling_requests, logits, rows)

        requests = [s.request for s in inputs.sampling_requests]
        metadata = build_sampling_metadata(
            params=[r.sampling_params for r in requests],
            generators=[self._generator(r.request_id, r.sampling_params.seed) for r in requests],
            prompt_token_ids=[r.prompt_token_ids for r in requests],
            output_token_ids=[r.output_token_ids for r in requests],
            banned_token_ids=[r.banned_token_ids() for r in requests],
            vocab_size=self.vocab_size,
            device=self.device,
            allowed_token_bitmask=self._allowed_masks(requests, [()] * len(requests), range(len(requests))),
        )
        result = self.sampler(logits, metadata)
        if self._feature_observers:
            self._observe_features([r.request_id for r in requests], rows)
        return self._to_output(requests, result)

    def _observe_features(self, request_ids: list[str], features: torch.Tensor) -> None:
        for observer in self._feature_observers:
            observer.observe_features(request_ids, features)

    def _allowed_masks(
        self, requests: Sequence[Request], drafts: Sequence[Sequence[int]], first_rows: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """See ``token_masks.allowed_token_masks``; the time taken goes to the structured-output stats."""
        start = time.perf_counter()
        masks = allowed_token_masks(requests, drafts, first_rows, self.vocab_size)
        if masks is not None and self.structured_stats is not None and any(r.grammar for r in requests):
            self.structured_stats.mask_seconds.append(time.perf_counter() - start)
        return masks  # both on the host: the sampler unpacks the bitmask there and sends one bool mask over

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        generator = self._generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self._generators[request_id] = generator
        return generator

    def _verify(self, scheduled: list[ScheduledRequest], logits: torch.Tensor, rows: torch.Tensor) -> ModelRunnerOutput:
        """Check each request's drafts (none for some) against its ``1 + len(drafts)`` rows of logits (read from
        the hidden ``rows``)."""
        num_drafts = [len(s.spec_token_ids) for s in scheduled]
        params, generators, prompts, outputs, banned = [], [], [], [], []
        for s in scheduled:
            request, p = s.request, s.request.sampling_params
            generator = self._generator(request.request_id, p.seed)
            for j in range(len(s.spec_token_ids) + 1):  # row j scores the token after j drafts
                params.append(p)
                generators.append(generator)
                prompts.append(request.prompt_token_ids)
                outputs.append(request.output_token_ids + s.spec_token_ids[:j] if p.has_penalties else ())
                banned.append(request.banned_token_ids(pending=s.spec_token_ids[:j]))
        first_row = list(itertools.accumulate((len(s.spec_token_ids) + 1 for s in scheduled), initial=0))
        masks = self._allowed_masks([s.request for s in scheduled], [s.spec_token_ids for s in scheduled], first_row)
        metadata = build_sampling_metadata(
            params, generators, prompts, outputs, banned, self.vocab_size, self.device, allowed_token_bitmask=masks
        )
        draft_ids = torch.tensor([t for s in scheduled for t in s.spec_token_ids], dtype=torch.int64, device=self.device)
        result = self.rejection_sampler(
            logits, metadata, num_drafts, draft_ids, self._stacked_draft_probs(scheduled),
            {
                i: g for i, s in enumerate(scheduled)
                if not s.request.sampling_params.is_greedy
                and (g := self._generator(s.request.request_id, s.request.sampling_params.seed)) is not None
            },
        )
        token_ids, num_emitted = result.token_ids.tolist(), result.num_emitted.tolist()
        first_rows = [end - count - 1 for end, count in zip(itertools.accumulate(k + 1 for k in num_drafts), num_drafts)]
        if self._feature_observers:  # the row that produced each request's last kept token
            last_rows = [first_rows[i] + num_emitted[i] - 1 for i in range(len(scheduled))]
            self._observe_features([s.request.request_id for s in scheduled], rows[last_rows])
        logprob_rows = _logprob_rows(result)
        output = ModelRunnerOutput()
        for i, s in enumerate(scheduled):
            num = s.request.sampling_params.logprobs
            output.sampled[s.request.request_id] = [
                _sampled(token_ids[i][j], num, logprob_rows, first_rows[i] + j) for j in range(num_emitted[i])
            ]
        return output

    def _stacked_draft_probs(self, scheduled: list[ScheduledRequest]) -> torch.Tensor | None:
        """[D, V] q of every scheduled draft, or None when every draft is deterministic. A deterministic
        draft among sampled ones (an n-gram lookup's beside a draft model's) has q one-hot on its token."""
        if not self._draft_probs:
            return None
        parts = []
        for s in scheduled:
            k = len(s.spec_token_ids)
            probs = self._draft_probs.get(s.request.request_id)
            if probs is None:
                ids = torch.tensor(s.spec_token_ids, dtype=torch.long, device=self.device)[:, None]
                probs = torch.zeros(k, self.vocab_size, device=self.device).scatter_(1, ids, 1.0)
            parts.append(probs[:k])
        return torch.cat(parts)

    @staticmethod
    def _to_output(requests: list, result) -> ModelRunnerOutput:
        token_ids = result.sampled_token_ids.tolist()
        logprob_rows = _logprob_rows(result)
        output = ModelRunnerOutput()
        for i, (request, token_id) in enumerate(zip(requests, token_ids, strict=True)):
            output.sampled[request.request_id] = [_sampled(token_id, request.sampling_params.logprobs, logprob_rows, i)]
        return output


def _logprob_rows(result) -> tuple[list, list, list] | None:
    """A sampler result's logprob tensors as host lists (one transfer each), or None without logprobs."""
    if result.logprobs is None:
        return None
    return result.logprob_token_ids.tolist(), result.logprobs.tolist(), result.sampled_token_ranks.tolist()


def _sampled(token_id: int, num_logprobs: int | None, logprob_rows: tuple[list, list, list] | None, row: int) -> SampledToken:
    if num_logprobs is None or logprob_rows is None:
        return SampledToken(token_id)
    top_ids, top_logprobs, ranks = logprob_rows
    return SampledToken(token_id, top_ids[row][: num_logprobs + 1], top_logprobs[row][: num_logprobs + 1], ranks[row])
