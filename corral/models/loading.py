"""Build a model from checkpoint weights one decoder layer at a time.

Each layer is read (dequantized) into float, calibrated on the hidden states of a short built-in text,
smoothed and packed before the next is read, so a quantized load holds one float layer at a time rather
than the whole float model (for the default model: ~14 MiB instead of ~540 MiB, plus the embedding).
The result is identical to loading everything, then ``smooth_(record_input_absmax(...))`` and
``quantize_``: the same float computations run on the same inputs, only interleaved.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import torch

from corral.errors import ConfigError, QuantizationError
from corral.models.calibration import DenseSequence, recording_input_absmax
from corral.models.registry import model_class
from corral.models.spec import ModelConfig
from corral.platform import release_free_memory
from corral.quantization.base import QuantMethod


@torch.no_grad()
def load_model(
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    quant_method: QuantMethod | None = None,
    calibration_ids: list[int] | None = None,
) -> torch.nn.Module:
    """The model of ``config`` with ``weights`` (HF names; a lazy mapping is read layer by layer),
    packed by ``quant_method`` if given. Methods that quantize activations need ``calibration_ids``."""
    model = model_class(config)(config).to(dtype)
    model.eval()
    model.check_layer_names(weights)
    model.load_global_weights(weights)
    calibrate = quant_method is not None and quant_method.quantizes_activations
    if calibrate and not calibration_ids:
        raise QuantizationError(f"quantization {quant_method.name} needs calibration token ids")
    sequence = DenseSequence(model, calibration_ids) if calibrate else None
    hidden = sequence.embed() if calibrate else None

    for index in range(config.num_hidden_layers):
        model.load_layer_weights(index, weights)
        if calibrate:
            layer = model.model.layers[index]
            with recording_input_absmax(layer, prefix=f"model.layers.{index}") as absmax:
                hidden = sequence.layer(index, hidden)
            model.smooth_layer_(index, absmax)
        if quant_method is not None:
            model.quantize_layer_(index, quant_method)
            release_free_memory()  # the layer's float weights, before the next one is read

    if quant_method is not None:
        head_absmax = model.model.norm(hidden).abs().amax(dim=0).float() if calibrate else None
        model.quantize_lm_head_(quant_method, head_absmax)  # reads the embedding: pack that afterwards
        model.model.embed_tokens.quantize_(quant_method)
        release_free_memory()
    return model.to(device)



def first_layers(
    config: ModelConfig, weights: Mapping[str, torch.Tensor], num_layers: int
) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
    """The model cut to its first ``num_layers`` decoder layers (embedding, final norm and head kept): a
    cheap draft model of the same vocabulary. The later layers' tensors are never read."""
    if not 1 <= num_layers <= config.num_hidden_layers:
        raise ConfigError(f"draft_num_layers must be in [1, {config.num_hidden_layers}], got {num_layers}")
    return replace(config, num_hidden_layers=num_layers), _FirstLayers(weights, num_layers)


class _FirstLayers(Mapping[str, torch.Tensor]):
    def __init__(self, weights: Mapping[str, torch.Tensor], num_layers: int):
        self._weights = weights
        self._names = [n for n in weights if _layer_of(n) < num_layers]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _layer_of(name: str) -> int:
    """``i`` of ``model.layers.{i}.*``, -1 outside the decoder layers (a malformed index is kept, and refused
    by the model's own name check)."""
    parts = name.split(".")
    if len(parts) < 3 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
        return -1
    return int(parts[2])
