"""Lossless sampling through the whole engine: a random target model with an 8-token vocabulary, drafts from
a different random model (one with a reduced head over 5 of the 8 ids too, n-gram lookup, and n-gram lookup
with the draft model for what it misses, so one batch checks deterministic and sampled drafts together),
thousands of sampled continuations. The empirical
distribution of the first two tokens (jointly) and of the third must match the target's exact one, computed
by enumerating every prefix, with the same sampling parameters (chi-square at a fixed seed)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from corral.config import SchedulerConfig
from corral.engine.block_manager import KVCacheManager
from corral.engine.core import EngineCore
from corral.engine.kv_cache import allocate_kv_caches
from corral.engine.model_runner import ModelRunner
from corral.engine.request import Request
from corral.engine.scheduler import Scheduler
from corral.engine.spec_policy import SpeculationPolicy
from corral.layers.attention.torch_paged import TorchPagedAttention
from corral.loader.names import expected_shapes
from corral.models.calibration import sequence_logits
from corral.models.draft_head import DraftHead, DraftHeadConfig
from corral.models.llama import LlamaForCausalLM
from corral.models.spec import ModelConfig
from corral.sample.metadata import build_sampling_metadata
from corral.sample.params import SamplingParams
from corral.sample.sampler import constrain_logits, sampling_probs
from corral.spec_decode.draft_head import DraftHeadProposer
from corral.spec_decode.draft_model import DraftModelProposer
from corral.spec_decode.ngram import NgramProposer

CPU = torch.device("cpu")
VOCAB = 8
PROMPT = [1, 2, 3, 1, 2]  # n-gram lookup finds "3 1 2 ..." to propose
NUM_SAMPLES = 10000
WAVE = 1000  # requests in flight at once
BLOCK_SIZE = 4
NUM_BLOCKS = 4096
CONFIG = ModelConfig(
    architecture="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_ids=(0,),
)
HEAD_TOKEN_IDS = [3, 1, 6, 0, 4]  # a reduced draft head: ids 2, 5 and 7 have draft probability 0
PARAMS = SamplingParams(temperature=0.9, top_k=6, frequency_penalty=1.0, max_tokens=3, ignore_eos=True)


def random_model(config: ModelConfig, seed: int) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config)
    model.load_weights(random_weights(config, seed))
    return model.eval()


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """HF-named random weights; a reduced head scores the first ``draft_vocab_size`` of HEAD_TOKEN_IDS."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        scale = 0.0 if "norm" in name else 2.0 * shape[-1] ** -0.5  # norms 1 + 0 = identity
        weights[name] = (1.0 if "norm" in name else 0.0) + scale * torch.randn(shape, generator=generator)
    if config.draft_vocab_size is not None:
        weights["lm_head.token_ids"] = torch.tensor(HEAD_TOKEN_IDS[: config.draft_vocab_size])
    return weights


def random_head(hidden_size: int, head_token_ids: list[int], vocab_size: int, seed: int = 5) -> DraftHead:
    """A draft head of random weights (norms 1) over ``head_token_ids``."""
    head = DraftHead(DraftHeadConfig(hidden_size, 2 * hidden_size, len(head_token_ids), vocab_size))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in head.tensors().items():
            if "norm" not in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * tensor.shape[-1] ** -0.5)
    head.head_token_ids = torch.tensor(head_token_ids)
    return head.requires_grad_(False)


def allocate(config: ModelConfig) -> tuple[list[torch.Tensor], TorchPagedAttention]:
    caches = allocate_kv_caches(NUM_BLOCKS, BLOCK_SIZE, config, torch.float32, CPU)
    backend = TorchPagedAttention(
        config.num_attention_heads, config.num_key_value_heads, config.head_size, BLOCK_SIZE
    )
    return caches, backend


class Counted:
    """A proposer that counts the requests it drafted for, and the drafts it proposed."""

    def __init__(self, proposer, asked: dict[str, int]):
        self.proposer, self.asked = proposer, asked

    def propose(self, requests, max_num_tokens):
        drafts = self.proposer.propose(requests, max_num_tokens)
        for request, draft in zip(requests, drafts, strict=True):
            self.asked[request.request_id] = len(draft.token_ids)
        return drafts

    def remove_requests(self, request_ids):
        self.proposer.remove_requests(request_ids)


def sample_continuations(proposer_kind: str, num_drafts: int, seeded: bool = False) -> list[tuple[int, ...]]:
    """NUM_SAMPLES continuations of PROMPT; ``seeded``: each request with a seed of its own (its drafts then come
    from a generator of their own too, which must not repeat the target's stream)."""
    target = random_model(CONFIG, seed=0)
    proposer = fallback = None
    if proposer_kind.startswith("draft_model") or proposer_kind == "ngram_draft":
        head_size = len(HEAD_TOKEN_IDS) if proposer_kind == "draft_model_reduced_head" else None
        draft_config = replace(CONFIG, num_hidden_layers=1, draft_vocab_size=head_size)
        draft_caches, draft_backend = allocate(draft_config)
        proposer = DraftModelProposer(
            random_model(draft_config, seed=1), draft_caches, draft_backend, BLOCK_SIZE, NUM_BLOCKS, VOCAB, CPU
        )
    if proposer_kind == "ngram_draft":  # each step: the lookup, then the draft model for the requests it missed
        looked_up: dict[str, int] = {}
        drafted: dict[str, int] = {}
        proposer, fallback = Counted(NgramProposer(1, 3), looked_up), Counted(proposer, drafted)
    elif proposer_kind == "draft_head":  # a random head over the target's features, reduced like the draft above
        head = random_head(CONFIG.hidden_size, HEAD_TOKEN_IDS, VOCAB)
        proposer = DraftHeadProposer(head, target.model.embed_tokens, VOCAB, CPU)
    elif proposer is None:
        proposer = NgramProposer(1, 3)
    caches, backend = allocate(CONFIG)
    runner = ModelRunner(target, caches, backend, BLOCK_SIZE, VOCAB, CPU, proposer, num_drafts, fallback)
    scheduler = Scheduler(
        SchedulerConfig(max_num_seqs=1024, max_num_batched_tokens=8192, max_model_len=64),
        KVCacheManager(NUM_BLOCKS, BLOCK_SIZE),
    )
    core = EngineCore(scheduler, runner, SpeculationPolicy(num_drafts, adaptive=False))
    torch.manual_seed(0)
    tokens: dict[str, list[int]] = {str(i): [] for i in range(NUM_SAMPLES)}
    mixed_steps = 0
    for wave in range(0, NUM_SAMPLES, WAVE):  # the waiting queue is sorted on insertion: keep it short
        for i in range(wave, min(wave + WAVE, NUM_SAMPLES)):
            params = replace(PARAMS, seed=1000 + i) if seeded else PARAMS
            core.add_request(Request(str(i), PROMPT, params, max_model_len=64))
        for _ in range(10 * WAVE):
            if not core.has_unfinished_requests():
                break
            if fallback is not None:
                looked_up.clear()
                drafted.clear()
            for output in core.step():
                tokens[output.request_id].extend(output.new_token_ids)
            if fallback is not None:  # the draft model ran only for the requests the lookup found nothing for
                assert all(looked_up.get(r, 0) == 0 for r in drafted)
                mixed_steps += any(looked_up.values()) and any(drafted.values())
        assert not core.has_unfinished_requests()
    assert core.kv_manager.num_free_blocks == NUM_BLOCKS
    stats = scheduler.spec_decode_stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert fallback is None or mixed_steps > 0  # steps that checked lookups and draft-model drafts together
    return [tuple(t) for t in tokens.values()]


def exact_probs(model: LlamaForCausalLM, generated: list[int]) -> torch.Tensor:
    """The target's sampling distribution [VOCAB] after PROMPT + generated, as plain sampling shapes it."""
    logits = sequence_logits(model, PROMPT + generated)[-1:].float()
    metadata = build_sampling_metadata(
        [PARAMS], [None], [PROMPT], [generated], [[]], VOCAB, CPU
    )
    return sampling_probs(constrain_logits(logits, metadata), metadata)[0].double()


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big].double(), counts[~big].double().sum().view(1)])
    expected = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    return float(torch.special.gammaincc(torch.tensor((int(keep.sum()) - 1) / 2, dtype=torch.float64), statistic / 2))


@pytest.mark.parametrize("proposer_kind, num_drafts",
                         [("draft_model", 2), ("draft_model_reduced_head", 2), ("ngram", 3), ("ngram_draft", 2),
                          ("draft_head", 2), ("draft_head_seeded", 2)])
def test_sampled_tokens_follow_the_target_distribution(proposer_kind, num_drafts):
    seeded = proposer_kind.endswith("_seeded")
    samples = sample_continuations(proposer_kind.removesuffix("_seeded"), num_drafts, seeded)
    assert all(len(s) == 3 for s in samples)
    target = random_model(CONFIG, seed=0)
    first = exact_probs(target, [])
    second = torch.stack([exact_probs(target, [a]) for a in range(VOCAB)])  # [first token, second]
    joint_two = (first[:, None] * second).reshape(-1)  # P(t1, t2)
    third = torch.zeros(VOCAB, dtype=torch.float64)
    for a, b in itertools.product(range(VOCAB), repeat=2):
        if joint_two[a * VOCAB + b] > 0:
            third += joint_two[a * VOCAB + b] * exact_probs(target, [a, b])

    pairs = torch.tensor([s[0] * VOCAB + s[1] for s in samples])
    assert chi_square_p_value(torch.bincount(pairs, minlength=VOCAB * VOCAB), joint_two) > 1e-3
    thirds = torch.tensor([s[2] for s in samples])
    assert chi_square_p_value(torch.bincount(thirds, minlength=VOCAB), third) > 1e-3
