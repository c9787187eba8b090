"""ModelRunner: executes one scheduled step on the model and samples the next tokens."""

from __future__ import annotations

import torch

from corral.engine.batch import ModelRunnerOutput, SampledToken, SchedulerOutput
from corral.engine.input_builder import build_model_inputs
from corral.layers.attention.backend import AttentionBackend
from corral.sample.metadata import build_sampling_metadata
from corral.sample.sampler import Sampler


class ModelRunner:
    """Owns the model, its KV caches, the attention backend, the sampler and per-request RNGs."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[torch.Tensor],
        backend: AttentionBackend,
        block_size: int,
        vocab_size: int,
        device: torch.device,
    ):
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator] = {}

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
        if not inputs.sampling_requests:
            return ModelRunnerOutput()
        logits = self.model.compute_logits(hidden[inputs.logits_indices]).float()  # [num_sampling, vocab]

        requests = [s.request for s in inputs.sampling_requests]
        metadata = build_sampling_metadata(
            params=[r.sampling_params for r in requests],
            generators=[self._generator(r.request_id, r.sampling_params.seed) for r in requests],
            prompt_token_ids=[r.prompt_token_ids for r in requests],
            output_token_ids=[r.output_token_ids for r in requests],
            banned_token_ids=[r.banned_token_ids() for r in requests],
            vocab_size=self.vocab_size,
            device=self.device,
        )
        result = self.sampler(logits, metadata)
        return self._to_output(requests, result)

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        generator = self._generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self._generators[request_id] = generator
        return generator

    @staticmethod
    def _to_output(requests: list, result) -> ModelRunnerOutput:
        token_ids = result.sampled_token_ids.tolist()
        output = ModelRunnerOutput()
        if result.logprobs is None:
            for request, token_id in zip(requests, token_ids, strict=True):
                output.sampled[request.request_id] = SampledToken(token_id)
            return output
        top_ids = result.logprob_token_ids.tolist()
        top_logprobs = result.logprobs.tolist()
        ranks = result.sampled_token_ranks.tolist()
        for i, (request, token_id) in enumerate(zip(requests, token_ids, strict=True)):
            num = request.sampling_params.logprobs
            if num is None:
                output.sampled[request.request_id] = SampledToken(token_id)
            else:
                output.sampled[request.request_id] = SampledToken(
                    token_id, top_ids[i][: num + 1], top_logprobs[i][: num + 1], ranks[i]
                )
        return output
