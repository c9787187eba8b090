"""The Llama-family model against HF transformers on tiny random checkpoints: untied embeddings with
llama3 RoPE scaling, and Qwen2 (q/k/v biases). Prefill in chunks and decode go through the paged cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corral import LLM, SamplingParams
from corral.loader.safetensors import save_hf_dir
from corral.models.spec import ModelConfig, RopeScaling

BASE = ModelConfig(
    architecture="llama", vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
    rope_theta=10000.0, bos_token_id=1, eos_token_ids=(2,),
)
CASES = {
    "llama3-untied": dataclasses.replace(
        BASE, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64), rope_theta=500000.0, tie_word_embeddings=False
    ),
    "qwen2-tied": dataclasses.replace(BASE, architecture="qwen2", attention_bias=True, tie_word_embeddings=True),
}


def random_weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    from corral.loader.names import expected_shapes

    generator = torch.Generator().manual_seed(0)
    weights = {}
    for name, shape in expected_shapes(config).items():
        noise = torch.randn(shape, generator=generator)
        weights[name] = 1.0 + 0.1 * noise if "norm" in name else 0.3 * noise
    return weights


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_and_logits_match_hf(case, device, tmp_path, default_model):
    import transformers

    config = CASES[case]
    save_hf_dir(tmp_path, config, random_weights(config))
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).to(device).eval()

    # The tiny vocabulary is a prefix of the default tokenizer's, which is only used to detokenize.
    llm = LLM(model=str(tmp_path), tokenizer=default_model, dtype="float32", quantization="none", device=device,
              max_model_len=256, max_num_batched_tokens=16, kv_cache_memory=8 * 1024**2)
    prompts = [[(7 * i + 3 * j) % 120 + 5 for j in range(n)] for i, n in enumerate([5, 23, 40, 1])]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, output in zip(prompts, outputs):
        with torch.no_grad():
            expected = reference.generate(
                torch.tensor([prompt], device=device), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(prompt):].tolist()
            ours = output.outputs[0].token_ids
            assert ours == expected
            logits = reference(torch.tensor([prompt + ours], device=device)).logits[0, len(prompt) - 1 : -1].cpu()
        expected_logprobs = logits.log_softmax(-1).gather(1, torch.tensor(ours)[:, None])[:, 0]
        our_logprobs = torch.tensor([entry[t].logprob for t, entry in zip(ours, output.outputs[0].logprobs)])
        torch.testing.assert_close(our_logprobs, expected_logprobs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_smoothing_leaves_the_float_model_unchanged(case):
    from corral.models.calibration import record_input_absmax, sequence_logits
    from corral.models.registry import model_class

    config = CASES[case]
    model = model_class(config)(config).eval()
    model.load_weights(random_weights(config))
    token_ids = [(5 * i) % 120 + 3 for i in range(40)]
    before = sequence_logits(model, token_ids)
    model.untie_lm_head_()  # a tied head gets its own copy, so it can be smoothed apart from the embedding
    absmax = record_input_absmax(model, token_ids)
    assert set(absmax) >= {"lm_head", "model.layers.0.self_attn.qkv_proj", "model.layers.2.mlp.down_proj"}
    model.smooth_(absmax)
    after = sequence_logits(model, token_ids)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # The scales really moved something: the first norm's weight is no longer the checkpoint's.
    assert not torch.allclose(model.model.layers[0].input_layernorm.weight, random_weights(config)[
        "model.layers.0.input_layernorm.weight"])
