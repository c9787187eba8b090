"""The llguidance backend on the default model's tokenizer: every schema of a varied set compiles, a valid
instance walks through the masks token by token to EOS, invalid specs are GrammarErrors, and a model vocabulary
wider than the tokenizer's gets its padding masked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corral.errors import GrammarError
from corral.loader.default_model import default_model_path
from corral.loader.tokenizer import load_tokenizer
from corral.sample.params import StructuredOutputsParams
from corral.structured.llguidance_backend import LLGuidanceBackend

SCHEMAS = json.loads((Path(__file__).parent / "schemas.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_path())


@pytest.fixture(scope="module")
def backend(tokenizer):
    return LLGuidanceBackend(tokenizer.backend.to_str(), [tokenizer.eos_token_id])


def allowed(matcher, vocab_size: int) -> set[int]:
    bitmask = torch.zeros(1, (vocab_size + 31) // 32, dtype=torch.int32)
    matcher.fill_bitmask(bitmask, 0)
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return set(torch.nonzero(bits.flatten()).flatten().tolist())


@pytest.mark.parametrize("case", SCHEMAS, ids=[c["name"] for c in SCHEMAS])
def test_a_valid_instance_walks_through_the_masks_to_eos(backend, tokenizer, case):
    matcher = backend.compile(StructuredOutputsParams(json=json.dumps(case["schema"]))).matcher()
    text = json.dumps(case["instance"], separators=(",", ":"), ensure_ascii=False)
    for token_id in tokenizer.encode(text, add_special_tokens=False):
        assert token_id in allowed(matcher, backend.vocab_size), f"{case['name']}: {tokenizer.decode([token_id])!r} masked"
        assert matcher.accept(token_id)
    assert tokenizer.eos_token_id in allowed(matcher, backend.vocab_size)
    assert matcher.accept(tokenizer.eos_token_id) and matcher.is_terminated()


def test_a_schema_with_one_instance_allows_one_token_at_a_time(backend, tokenizer):
    case = next(c for c in SCHEMAS if c.get("unique"))
    matcher = backend.compile(StructuredOutputsParams(json=json.dumps(case["schema"]))).matcher()
    for token_id in tokenizer.encode(case["only_output"], add_special_tokens=False):
        assert allowed(matcher, backend.vocab_size) == {token_id}
        matcher.accept(token_id)
    assert allowed(matcher, backend.vocab_size) == {tokenizer.eos_token_id}


def test_rollback_returns_to_the_earlier_mask(backend, tokenizer):
    matcher = backend.compile(StructuredOutputsParams(choice=("alpha beta", "alpha gamma"))).matcher()
    ids = tokenizer.encode("alpha beta", add_special_tokens=False)
    matcher.accept(ids[0])
    before = allowed(matcher, backend.vocab_size)
    matcher.accept(ids[1])
    matcher.rollback(1)
    assert allowed(matcher, backend.vocab_size) == before


@pytest.mark.parametrize("spec, message", [
    (StructuredOutputsParams(json='{"type": "array", "uniqueItems": true}'), "uniqueItems"),
    (StructuredOutputsParams(json="{not json"), "JSON schema"),
    (StructuredOutputsParams(regex="(("), "regex"),
    (StructuredOutputsParams(grammar="start: ("), "grammar"),
])
def test_invalid_specs_are_grammar_errors(backend, spec, message):
    with pytest.raises(GrammarError, match=message):
        backend.compile(spec)


def test_non_strict_schemas_drop_the_keywords_the_backend_lacks(backend):
    backend.compile(StructuredOutputsParams(json='{"type": "array", "uniqueItems": true}', strict=False))


def test_a_wider_model_vocabulary_gets_its_padding_masked(backend):
    matcher = backend.compile(StructuredOutputsParams(json_object=True)).matcher()
    bitmask = torch.full((2, (backend.vocab_size + 31) // 32 + 4), -1, dtype=torch.int32)
    matcher.fill_bitmask(bitmask, 1)
    assert not bitmask[1, -4:].any() and bitmask[1].any() and (bitmask[0] == -1).all()


def test_a_tokenizer_llguidance_cannot_read_turns_structured_output_off(tokenizer):
    from corral.structured.llguidance_backend import llguidance_grammars

    assert llguidance_grammars('{"model": {}}', [2], 10) is None
    assert llguidance_grammars(tokenizer.backend.to_str(), [tokenizer.eos_token_id], 49152) is not None


def test_importing_the_engine_and_server_compiles_nothing():
    # llguidance.torch decorates a kernel with torch.compile at import, which imports torch._dynamo and inductor:
    # 8 s more before `corral serve` answers (13.3 s against 5.1 s to healthy, measured on Zen 4).
    probe = ("import sys; import corral.llm, corral.server.app, corral.structured.llguidance_backend; "
             "print(sorted(n for n in ('torch._dynamo', 'torch._inductor') if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
