"""Draft-head proposer: drafts from the target's own last hidden state (``models/draft_head.py``).

After each target step the runner hands over, per request, the hidden row that produced its last token
(``observe_features``). Proposing feeds that row and the last token's embedding (the target's embedding table)
to the head, draws draft 1 from its logits with the request's sampling parameters (``draft_sampling.py``), then
feeds the head's own predicted feature and the drawn token for each further draft. The head keeps no KV cache,
so a rejected draft costs nothing to undo: the next step's feature comes from the target again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from corral.engine.proposer import Draft
from corral.engine.request import Request
from corral.errors import ConfigError
from corral.models.draft_head import DraftHead, load_draft_head
from corral.models.spec import ModelConfig
from corral.quantization.base import QuantMethod
from corral.spec_decode.draft_model import weights_per_step
from corral.spec_decode.draft_sampling import DraftProposal, sample_drafts, seeded_generator


class DraftHeadProposer:
    def __init__(
        self,
        head: DraftHead,
        embed: Callable[[torch.Tensor], torch.Tensor],  # target token ids -> the target's input embeddings
        vocab_size: int,
        device: torch.device,
    ):
        self.head = head
        self.embed = embed
        self.vocab_size = vocab_size
        self.device = device
        self._features: dict[str, torch.Tensor] = {}
        self._generators: dict[str, torch.Generator | None] = {}

    def observe_features(self, request_ids: Sequence[str], features: torch.Tensor) -> None:
        for row, request_id in enumerate(request_ids):
            self._features[request_id] = features[row]  # a view of the step's sampled rows, not of its hidden tensor

    @torch.inference_mode()
    def propose(self, requests: Sequence[Request], max_num_tokens: Sequence[int]) -> list[Draft]:
        proposals: list[DraftProposal | None] = []
        for request, k in zip(requests, max_num_tokens, strict=True):
            if k < 1 or request.request_id not in self._features:
                proposals.append(None)
                continue
            if request.request_id not in self._generators:
                self._generators[request.request_id] = seeded_generator(request, self.device)
            proposals.append(DraftProposal(request, k, self._generators[request.request_id]))
        active = [p for p in proposals if p is not None]
        if active:
            self._draw(active)
        return [Draft([]) if p is None else p.as_draft() for p in proposals]

    def remove_requests(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            self._features.pop(request_id, None)
            self._generators.pop(request_id, None)

    def _draw(self, proposals: list[DraftProposal]) -> None:
        features = torch.stack([self._features[p.request.request_id] for p in proposals]).float()  # the head is float32
        tokens = [p.request.all_token_ids[-1] for p in proposals]
        live = list(range(len(proposals)))
        for step in range(max(p.num_tokens for p in proposals)):
            embeddings = self.embed(torch.tensor(tokens, dtype=torch.int64, device=self.device)).float()
            features, logits = self.head(features, embeddings)
            sample_drafts([proposals[i] for i in live], logits.float(), self.head.head_token_ids, self.vocab_size,
                          self.device)
            keep = [j for j, i in enumerate(live) if proposals[i].num_tokens > step + 1]
            if not keep:
                return
            features = features[keep]
            live = [live[j] for j in keep]
            tokens = [proposals[i].token_ids[-1] for i in live]


def check_head_fits(head: DraftHead, target: ModelConfig, path: str) -> None:
    """ConfigError (one line) when the head was not made for a model of the target's shape."""
    if head.config.hidden_size != target.hidden_size or head.config.vocab_size != target.vocab_size:
        raise ConfigError(
            f"draft head {path} reads hidden states of size {head.config.hidden_size} over {head.config.vocab_size} "
            f"tokens; the target has {target.hidden_size} over {target.vocab_size}: make the head for this target"
        )


@torch.no_grad()
def fold_feature_scales_(head: DraftHead, scales: torch.Tensor) -> None:
    """A target whose LM head was smoothed (SmoothQuant, quantization int8) hands out ``h / scales``; the head was
    trained on ``h``: multiply its first linear's feature columns by ``scales`` so it computes the same thing."""
    head.fc.weight[:, : head.config.hidden_size].mul_(scales.to(head.fc.weight.dtype))


def head_step_cost(head: DraftHead, target: ModelConfig) -> float:
    """A head step's cost as a fraction of a target decode step, by the weights each streams."""
    config = head.config
    weights = 2 * config.hidden_size**2 + 3 * config.hidden_size * config.intermediate_size
    return (weights + config.head_size * config.hidden_size) / weights_per_step(target)


def draft_head_proposer(
    path: str, quant_method: QuantMethod | None, target: torch.nn.Module, target_config: ModelConfig,
    device: torch.device,
) -> tuple[DraftHeadProposer, float]:
    """The head at ``path``, its linears packed by ``quant_method``, drafting over ``target``'s embedding; and
    what one draft costs in target decode steps (for the speculation policy)."""
    if quant_method is not None and quant_method.name == "gguf":
        raise ConfigError("quantization gguf keeps a GGUF file's blocks; a draft head has none: use int8, int4 or none")
    head = load_draft_head(path)
    check_head_fits(head, target_config, path)
    scales = target.final_hidden_scales
    if scales is not None:
        fold_feature_scales_(head, scales)
    if quant_method is not None:
        head.quantize_(quant_method)
    head.to(device)
    embed_tokens = target.model.embed_tokens
    return DraftHeadProposer(head, embed_tokens, target_config.vocab_size, device), head_step_cost(head, target_config)
