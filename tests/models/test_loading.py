"""Streaming load: layer by layer (read, calibrate, smooth, pack) gives exactly the model that loading
everything first gives, and reads every tensor once, in layer order."""

from __future__ import annotations

import pytest
import torch

from corral.errors import QuantizationError
from corral.loader.lazy import LazyWeights
from corral.models.calibration import record_input_absmax, sequence_logits
from corral.models.loading import load_model
from corral.models.registry import model_class
from corral.quantization.int8 import Int8Method, fbgemm_available

from .test_llama import CASES, random_weights

TOKEN_IDS = [(7 * i) % 120 + 3 for i in range(48)]


def eager_model(config, weights, quantized: bool) -> torch.nn.Module:
    model = model_class(config)(config).eval()
    model.load_weights(weights)
    if quantized:
        model.untie_lm_head_()
        model.smooth_(record_input_absmax(model, TOKEN_IDS))
        model.quantize_(Int8Method())
    return model


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int8"])
def test_streamed_load_equals_loading_everything_first(case, quantized):
    if quantized and not fbgemm_available():
        pytest.skip("int8 needs fbgemm")
    config = CASES[case]
    weights = random_weights(config)
    reads: list[str] = []

    def read(name: str) -> torch.Tensor:
        reads.append(name)
        return weights[name].clone()

    lazy = LazyWeights({name: tuple(t.shape) for name, t in weights.items()}, read)
    streamed = load_model(config, lazy, torch.float32, torch.device("cpu"),
                          Int8Method() if quantized else None, TOKEN_IDS if quantized else None)

    assert torch.equal(sequence_logits(streamed, TOKEN_IDS), sequence_logits(eager_model(config, weights, quantized), TOKEN_IDS))
    assert sorted(reads) == sorted(weights)  # each tensor read once
    layer_order = [int(name.split(".")[2]) for name in reads if name.startswith("model.layers.")]
    assert layer_order == sorted(layer_order)  # one layer at a time, never revisited


def test_activation_quantization_needs_calibration_tokens():
    config = CASES["qwen2-tied"]
    with pytest.raises(QuantizationError, match="calibration"):
        load_model(config, random_weights(config), torch.float32, torch.device("cpu"), Int8Method(), None)
