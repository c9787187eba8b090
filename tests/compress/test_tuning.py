"""``tune_group_parameters``: the scales and mins move so the int4 model's KL to the float one drops; the
codes, the packed size and every other tensor stay as they were."""

from __future__ import annotations

import torch

from corral.compress.tuning import LINEAR_NAMES, TuningConfig, tune_group_parameters
from corral.models.spec import ModelConfig
from corral.quantization.blockwise import BlockQuantized, quantize_int4

CONFIG = ModelConfig(
    architecture="llama", vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=True,
)


def _reference() -> dict[str, torch.Tensor]:
    from corral.loader.names import expected_shapes

    generator = torch.Generator().manual_seed(0)
    return {
        name: (1.0 + 0.1 * noise) if "norm" in name else noise * shape[-1] ** -0.5
        for name, shape in expected_shapes(CONFIG).items()
        for noise in [torch.randn(shape, generator=generator)]
    }


def test_tuning_lowers_the_kl_and_keeps_the_codes():
    reference = _reference()
    linears = {f"model.layers.{i}.{name}.weight" for i in range(CONFIG.num_hidden_layers) for name in LINEAR_NAMES}
    state = {name: quantize_int4(w, 32) if name in linears else w.clone() for name, w in reference.items()}
    before = dict(state)
    tokens = torch.randint(3, CONFIG.vocab_size, (8, 64), generator=torch.Generator().manual_seed(1))
    tuning = TuningConfig(steps=12, learning_rate=1e-2, sequences_per_step=8)

    report = tune_group_parameters(CONFIG, reference, state, tokens, tuning)

    assert report.steps == 12
    assert report.kl_after < 0.8 * report.kl_before
    for name in linears:
        tuned, rounded = state[name], before[name]
        assert isinstance(tuned, BlockQuantized) and tuned.scales.dtype == torch.float16
        assert torch.equal(tuned.values, rounded.values) and tuned.nbytes() == rounded.nbytes()
        assert not torch.equal(tuned.scales, rounded.scales) and not torch.equal(tuned.mins, rounded.mins)
    for name in set(reference) - linears:
        assert state[name] is before[name]


def test_zero_steps_change_nothing_but_report():
    reference = _reference()
    state = {name: quantize_int4(w, 32) if "proj" in name else w for name, w in reference.items()}
    before = {name: t.scales.clone() for name, t in state.items() if isinstance(t, BlockQuantized)}
    tokens = torch.randint(3, CONFIG.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    report = tune_group_parameters(CONFIG, reference, state, tokens, TuningConfig(steps=0))
    assert report.kl_before == report.kl_after > 0
    assert all(torch.equal(state[name].scales, scales) for name, scales in before.items())
