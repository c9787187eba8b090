"""A draft model with a reduced LM head through the whole engine: greedy output identical to plain decoding (with
penalties, banned tokens and a draft whose every head token is banned), its drafts mapped back to target ids,
every KV block returned; the speculation policy counts a draft model's own passes. The sampled distribution's
exactness is in test_distribution.py."""

from __future__ import annotations

from dataclasses import replace

import torch

from corral.config import SchedulerConfig
from corral.engine.block_manager import KVCacheManager
from corral.engine.core import EngineCore
from corral.engine.model_runner import ModelRunner
from corral.engine.proposer import Proposer
from corral.engine.request import Request
from corral.engine.scheduler import Scheduler
from corral.engine.spec_policy import SpeculationPolicy
from corral.models.llama import LlamaForCausalLM
from corral.models.spec import ModelConfig
from corral.sample.params import SamplingParams
from corral.spec_decode.draft_model import DraftModelProposer, relative_step_cost
from tests.spec_decode.test_distribution import (
    BLOCK_SIZE,
    CPU,
    NUM_BLOCKS,
    allocate,
    random_model,
    random_weights,
)

VOCAB = 64
SEED = 3
TARGET = ModelConfig(
    architecture="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
    tie_word_embeddings=True, eos_token_ids=(0,),
)
PROMPTS = [[5, 9, 13, 9, 5], [1, 2, 3, 4, 5, 6, 7, 8], [40, 41], [60, 3, 60, 3, 60, 3], [22] * 9, [17, 30, 12]]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
    SamplingParams(temperature=0.0, max_tokens=24, frequency_penalty=0.7, presence_penalty=0.2, ignore_eos=True),
    SamplingParams(temperature=0.0, max_tokens=24, repetition_penalty=1.3, min_tokens=24, ignore_eos=True),
]


def draft_of(head_token_ids: list[int]) -> LlamaForCausalLM:
    """The target's own weights with a head over ``head_token_ids`` only: it drafts the target's argmax
    whenever that token is in its head, and something else otherwise."""
    config = replace(TARGET, draft_vocab_size=len(head_token_ids))
    model = LlamaForCausalLM(config)
    model.load_weights({**random_weights(TARGET, SEED), "lm_head.token_ids": torch.tensor(head_token_ids)})
    return model.eval()


def generate(target: torch.nn.Module, proposer: Proposer | None, num_drafts: int) -> tuple[list[list[int]], EngineCore]:
    caches, backend = allocate(TARGET)
    runner = ModelRunner(target, caches, backend, BLOCK_SIZE, VOCAB, CPU, proposer, num_drafts)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512, max_model_len=128),
                          KVCacheManager(NUM_BLOCKS, BLOCK_SIZE))
    core = EngineCore(scheduler, runner, SpeculationPolicy(num_drafts, adaptive=False) if proposer else None)
    requests = [(prompt, params) for params in PARAMS for prompt in PROMPTS]
    for i, (prompt, params) in enumerate(requests):
        core.add_request(Request(str(i), prompt, params, max_model_len=128))
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(requests))}
    for _ in range(1000):
        if not core.has_unfinished_requests():
            break
        for output in core.step():
            tokens[output.request_id].extend(output.new_token_ids)
    assert not core.has_unfinished_requests()
    return list(tokens.values()), core


def test_greedy_output_with_a_reduced_head_draft_is_plain_decoding():
    target = random_model(TARGET, SEED)
    plain, _ = generate(target, None, 0)
    # the head: the ids plain decoding produced most (as a frequency count would rank them), then others
    counts = torch.bincount(torch.tensor([t for row in plain for t in row]), minlength=VOCAB)
    head = counts.argsort(descending=True, stable=True)[:24].tolist()
    draft = draft_of(head)
    caches, backend = allocate(TARGET)
    proposer = DraftModelProposer(draft, caches, backend, BLOCK_SIZE, NUM_BLOCKS, VOCAB, CPU)
    speculative, core = generate(target, proposer, 3)
    assert speculative == plain
    stats = core.scheduler.spec_decode_stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert core.kv_manager.num_free_blocks == NUM_BLOCKS and proposer.num_free_blocks == NUM_BLOCKS


def test_drafts_are_target_ids_and_a_fully_banned_head_drafts_nothing():
    head = [50, 7, 33, 2, 61, 18]
    caches, backend = allocate(TARGET)
    proposer = DraftModelProposer(draft_of(head), caches, backend, BLOCK_SIZE, NUM_BLOCKS, VOCAB, CPU)
    free = Request("free", [5, 9, 13], SamplingParams(temperature=1.0, seed=1, max_tokens=8), max_model_len=128)
    # min_tokens bans the EOS and stop ids: with every head id a stop id, no head token may come next
    banned = Request("banned", [5, 9, 13], SamplingParams(temperature=0.0, max_tokens=8, min_tokens=4,
                                                          stop_token_ids=head), max_model_len=128)
    drafts = proposer.propose([free, banned], [4, 4])
    assert len(drafts[0].token_ids) == 4 and set(drafts[0].token_ids) <= set(head)
    probs = drafts[0].probs  # [4, VOCAB]: the draft's q over the target's vocabulary, 0 outside its head
    assert probs.shape == (4, VOCAB) and torch.allclose(probs.sum(-1), torch.ones(4))
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[head] = False
    assert (probs[:, outside] == 0).all() and (probs[:, head] > 0).any(-1).all()
    assert drafts[1].token_ids == []
    proposer.remove_requests(["free", "banned"])
    assert proposer.num_free_blocks == NUM_BLOCKS


def test_a_draft_models_own_cost_shortens_its_drafts():
    smollm2 = ModelConfig(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          max_position_embeddings=8192, tie_word_embeddings=True)
    first_8 = replace(smollm2, num_hidden_layers=8)
    assert 0.41 < relative_step_cost(first_8, smollm2) < 0.43  # the full head weighs as much as 8 layers
    assert 0.18 < relative_step_cost(replace(first_8, num_hidden_layers=6, draft_vocab_size=8192), smollm2) < 0.2
    request = Request("r", [1, 2, 3], SamplingParams(max_tokens=64), max_model_len=128)
    free, costly = SpeculationPolicy(8), SpeculationPolicy(8, proposer_cost=0.4)
    for policy in (free, costly):
        for kept in range(9):  # each draft kept with a chance of 0.8 when the ones before it were
            for _ in range(round(100 * 0.8**kept * (0.2 if kept < 8 else 1))):
                policy.record(request, 8, kept)
    assert 0 < costly.num_spec_tokens(request) < free.num_spec_tokens(request)
