"""Architecture name -> model class."""

from __future__ import annotations

from torch import nn

from corral.errors import UnsupportedModelError
from corral.models.llama import LlamaForCausalLM
from corral.models.spec import ModelConfig

_MODELS: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,  # Llama with q/k/v biases (config.attention_bias)
}


def model_class(config: ModelConfig) -> type[nn.Module]:
    try:
        return _MODELS[config.architecture]
    except KeyError:
        raise UnsupportedModelError(f"no model class for architecture {config.architecture!r}") from None
