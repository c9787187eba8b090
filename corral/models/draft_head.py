"""A draft head: a small network that guesses the target's next tokens from the target's own last hidden state.

A separate draft model must rebuild from the tokens alone what the target has already computed, and a small
one does it badly (the default model's distilled drafts agree with it on a sampled story 17% of the time).
A draft head reads the target's final hidden state instead, as EAGLE (Li et al., 2024) and Hydra do: given
the state ``h_t`` that produced token ``x_{t+1}`` and that token's embedding, it predicts the next state
``h_{t+1}`` and from it a distribution over ``x_{t+2}``; fed its own prediction and the token drawn from it,
it drafts further. corral's head has no attention (no KV cache to keep beside the target's): a linear map of
``[h_t; embed(x_{t+1})]`` to the hidden size, one SwiGLU block with a residual, the final norm, and a reduced
LM head over the most frequent tokens (``head_token_ids``, as a reduced-head draft model has).

A head directory holds ``config.json`` (``"architectures": ["CorralDraftHead"]`` and the sizes below) and
``model.safetensors`` (the tensors of ``tensor_shapes``, ``lm_head.token_ids`` int64). The token embedding is the
target's own and is not stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from corral.errors import ModelLoadError
from corral.layers.linear import Linear
from corral.models.reduced_head import HEAD_IDS, checked_head_token_ids

ARCHITECTURE = "CorralDraftHead"


@dataclass(frozen=True)
class DraftHeadConfig:
    hidden_size: int  # the target's
    intermediate_size: int  # of the SwiGLU block
    head_size: int  # rows of the reduced LM head
    vocab_size: int  # the target's: head ids index it
    rms_norm_eps: float = 1e-5


def tensor_shapes(config: DraftHeadConfig) -> dict[str, tuple[int, ...]]:
    d, i = config.hidden_size, config.intermediate_size
    return {
        "fc.weight": (d, 2 * d),
        "mlp_norm.weight": (d,),
        "gate_proj.weight": (i, d),
        "up_proj.weight": (i, d),
        "down_proj.weight": (d, i),
        "norm.weight": (d,),
        "lm_head.weight": (config.head_size, d),
    }


class DraftHead(nn.Module):
    """``forward(features, token_embeddings) -> (next_features, head_logits)``; column j of the logits scores
    target id ``head_token_ids[j]``. Plain torch operations: the same module trains and serves (its linears
    may be packed by ``quantize_`` for serving)."""

    def __init__(self, config: DraftHeadConfig):
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        self.config = config
        self.fc = Linear(2 * d, d)
        self.mlp_norm = nn.Parameter(torch.ones(d))
        self.gate_proj = Linear(d, i)
        self.up_proj = Linear(d, i)
        self.down_proj = Linear(i, d)
        self.norm = nn.Parameter(torch.ones(d))
        self.lm_head = Linear(d, config.head_size)
        self.register_buffer("head_token_ids", torch.arange(config.head_size, dtype=torch.int64))

    def forward(self, features: torch.Tensor, token_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.fc(torch.cat((features, token_embeddings), dim=-1))
        x = self._rms_norm(z, self.mlp_norm)
        z = z + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        next_features = self._rms_norm(z, self.norm)
        return next_features, self.lm_head(next_features)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps) * weight

    def quantize_(self, method) -> None:
        """Pack every linear (``QuantMethod``): a draft step then streams a quarter of the float bytes."""
        for layer in (self.fc, self.gate_proj, self.up_proj, self.down_proj, self.lm_head):
            layer.quantize_(method)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The float weights under the checkpoint's names (before ``quantize_``)."""
        return {
            "fc.weight": self.fc.weight, "mlp_norm.weight": self.mlp_norm, "gate_proj.weight": self.gate_proj.weight,
            "up_proj.weight": self.up_proj.weight, "down_proj.weight": self.down_proj.weight,
            "norm.weight": self.norm, "lm_head.weight": self.lm_head.weight,
        }


def save_draft_head(head: DraftHead, path: str | os.PathLike[str]) -> None:
    os.makedirs(path, exist_ok=True)
    tensors = {name: t.detach().contiguous() for name, t in head.tensors().items()}
    tensors[HEAD_IDS] = head.head_token_ids.contiguous()
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": [ARCHITECTURE], **asdict(head.config)}, f, indent=2)


def load_draft_head(path: str | os.PathLike[str]) -> DraftHead:
    """The head at ``path``, float32; ModelLoadError (one line) for a missing, misshapen or unknown tensor."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        fields = {k: raw[k] for k in ("hidden_size", "intermediate_size", "head_size", "vocab_size")}
        config = DraftHeadConfig(**fields, rms_norm_eps=raw.get("rms_norm_eps", 1e-5))
        weights = load_file(os.path.join(path, "model.safetensors"))
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"not a draft head directory: {path} ({error})") from error
    expected = tensor_shapes(config)
    unknown = sorted(set(weights) - set(expected) - {HEAD_IDS})
    if unknown:
        raise ModelLoadError(f"draft head {path}: unexpected tensor {unknown[0]!r}")
    head = DraftHead(config)
    head.head_token_ids = checked_head_token_ids(weights, config.head_size, config.vocab_size)
    with torch.no_grad():
        for name, tensor in head.tensors().items():
            if name not in weights:
                raise ModelLoadError(f"draft head {path}: missing tensor {name!r}")
            if tuple(weights[name].shape) != expected[name]:
                raise ModelLoadError(
                    f"draft head {path}: tensor {name!r} has shape {tuple(weights[name].shape)}, expected {expected[name]}"
                )
            tensor.copy_(weights[name].float())
    head.requires_grad_(False)
    return head
