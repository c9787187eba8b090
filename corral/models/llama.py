"""Llama-family decoder (Llama 2/3, SmolLM, Qwen2): one forward for prefill, decode and mixed batches.

Module names mirror the HF checkpoint, except that q/k/v and gate/up are fused into
``qkv_proj`` and ``gate_up_proj`` (one GEMM each); ``load_weights`` does the fusing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from corral.errors import ModelLoadError
from corral.kernels.decoder_layer import BlockLinearParts, decoder_layer, pack_decoder_layer
from corral.layers.activation import silu_and_mul
from corral.layers.attention.backend import AttentionBackend
from corral.layers.attention.metadata import AttentionMetadata
from corral.layers.embedding import Embedding
from corral.layers.linear import Linear
from corral.layers.norm import RMSNorm
from corral.layers.rotary import RotaryEmbedding
from corral.models.reduced_head import HEAD_IDS, checked_head_token_ids
from corral.models.spec import ModelConfig
from corral.quantization.base import QuantizedLinear, QuantMethod
from corral.quantization.blockwise import BlockLinear, BlockQuantized
from corral.quantization.smooth import smoothing_scales


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_size = config.head_size
        self.q_size = self.num_heads * self.head_size
        self.kv_size = self.num_kv_heads * self.head_size
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size)
        self.rotary = rotary

    def forward(
        self,
        rope: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,  # [num_tokens, hidden_size]
        kv_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        # q and k rotate together: one pass over [num_tokens, num_heads + num_kv_heads, head_size]
        qk = self.rotary(qkv[:, : self.q_size + self.kv_size].view(num_tokens, -1, self.head_size), *rope)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_size)
        out = backend.forward(q, k, v, kv_cache, attn_metadata)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        rope: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(rope, self.input_layernorm(hidden), kv_cache, attn_metadata, backend)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def pack_for_decode(self, block_size: int) -> object | None:
        """This layer as one C++ call for all-decode steps (``kernels.decoder_layer``), or None when its
        linears are not all block-quantized or the C++ kernels are not built."""
        attn, mlp = self.self_attn, self.mlp
        linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if not all(isinstance(linear.packed, BlockLinear) for linear in linears):
            return None
        parts = [
            BlockLinearParts(p.weight, p.bias, p.activation_bits, p.dense, p.dense_min_rows)
            for p in (linear.packed for linear in linears)
        ]
        return pack_decoder_layer(
            *parts, self.input_layernorm.weight, self.post_attention_layernorm.weight, self.input_layernorm.eps,
            attn.num_heads, attn.num_kv_heads, attn.head_size, block_size,
        )


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(
            config.head_size, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, self.rotary) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Causal LM over a paged KV cache: ``forward`` gives hidden states, ``compute_logits`` the logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        # A reduced head (a draft model's, ``config.draft_vocab_size``) scores only ``head_token_ids``; tied, it
        # is built from those embedding rows once the embedding is loaded (``load_global_weights``).
        self.head_token_ids: torch.Tensor | None  # a buffer: it moves with the model
        self.register_buffer("head_token_ids", None if config.draft_vocab_size is None
                             else torch.zeros(config.draft_vocab_size, dtype=torch.int64))
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(config.hidden_size, config.draft_vocab_size or config.vocab_size)
        self.decode_layers: list[object] | None = None  # see fuse_decode_layers_
        self.final_hidden_scales: torch.Tensor | None = None  # SmoothQuant's, divided out of the final norm

    def fuse_decode_layers_(self, block_size: int) -> bool:
        """Run all-decode steps through one C++ call per layer (bit-identical; see ``kernels.decoder_layer``)
        when every layer can be packed so. Valid with the CPU paged attention backend, whose decode kernel
        it calls. Returns whether it did."""
        packed = [layer.pack_for_decode(block_size) for layer in self.model.layers]
        self.decode_layers = packed if all(p is not None for p in packed) else None
        return self.decode_layers is not None

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_caches: list[torch.Tensor],  # one [2, num_slots, num_kv_heads, head_size] per layer
        attn_metadata: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:  # [num_tokens, hidden_size]
        hidden = self.model.embed_tokens(input_ids)
        rope = self.model.rotary.cos_sin(positions, hidden.dtype)  # once per step, shared by every layer
        if self.decode_layers is not None and attn_metadata.num_decode_tokens == input_ids.shape[0]:
            md = attn_metadata
            for layer, kv_cache in zip(self.decode_layers, kv_caches, strict=True):
                hidden = decoder_layer(
                    layer, hidden, *rope, kv_cache, md.slot_mapping, md.block_tables, md.seq_of_token, md.context_lens
                )
            return self.model.norm(hidden)
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            hidden = layer(rope, hidden, kv_cache, attn_metadata, backend)
        return self.model.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [num_rows, vocab_size]
        """Logits over the whole vocabulary; with a reduced head, -inf outside ``head_token_ids`` (the model
        gives those tokens probability 0), so any caller may use a draft checkpoint as a model."""
        logits = self.compute_head_logits(hidden)
        if self.head_token_ids is None:
            return logits
        full = logits.new_full((logits.shape[0], self.config.vocab_size), float("-inf"))
        return full.index_copy_(1, self.head_token_ids, logits)

    def compute_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [num_rows, len(head_token_ids)]
        """Logits of the head's own columns: column j scores ``head_token_ids[j]`` (every id, in order, when
        the head is full)."""
        if self.lm_head is None:
            return torch.nn.functional.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)

    def untie_lm_head_(self) -> None:
        """Give a tied LM head its own weight, so it can be smoothed and packed apart from the embedding."""
        if self.lm_head is None:
            self.lm_head = Linear.from_weight(self.model.embed_tokens.weight.detach().clone())

    @torch.no_grad()
    def smooth_(self, input_absmax: Mapping[str, torch.Tensor], alpha: float = 0.5) -> None:
        """Fold SmoothQuant scales into each linear layer and its producer; the float model's output is
        unchanged up to rounding. ``input_absmax`` comes from ``record_input_absmax``."""
        self.untie_lm_head_()
        for index in range(len(self.model.layers)):
            self.smooth_layer_(index, input_absmax, alpha)
        self.smooth_lm_head_(input_absmax["lm_head"], alpha)

    @torch.no_grad()
    def smooth_layer_(self, index: int, input_absmax: Mapping[str, torch.Tensor], alpha: float = 0.5) -> None:
        """``smooth_`` for decoder layer ``index`` alone (``input_absmax`` keyed by full module names)."""
        prefix = f"model.layers.{index}."
        scales = {
            name: smoothing_scales(input_absmax[prefix + name], linear.weight, alpha)
            for name, linear in self.input_scaled_linears(index).items()
        }
        self.scale_layer_inputs_(index, scales)

    def input_scaled_linears(self, index: int) -> dict[str, Linear]:
        """The linears of decoder layer ``index`` whose input channels ``scale_layer_inputs_`` can rescale,
        by name within the layer."""
        layer = self.model.layers[index]
        return {
            "self_attn.qkv_proj": layer.self_attn.qkv_proj,
            "self_attn.o_proj": layer.self_attn.o_proj,
            "mlp.gate_up_proj": layer.mlp.gate_up_proj,
            "mlp.down_proj": layer.mlp.down_proj,
        }

    def share_o_proj_scales(self, scales: torch.Tensor) -> torch.Tensor:
        """``scales`` for o_proj's input made equal across the query heads that share a KV head (their max),
        which is the only form ``scale_layer_inputs_`` can fold into V."""
        attn = self.model.layers[0].self_attn
        group = attn.num_heads // attn.num_kv_heads
        shared = scales.view(attn.num_kv_heads, group, attn.head_size).amax(dim=1)
        return shared[:, None, :].expand(-1, group, -1).reshape(-1)

    @torch.no_grad()
    def scale_layer_inputs_(self, index: int, scales: Mapping[str, torch.Tensor]) -> None:
        """Multiply the input channels of layer ``index``'s linears (named as in ``input_scaled_linears``)
        by ``scales`` and divide them out of whatever produces those inputs: the float model's output is
        unchanged up to rounding (SmoothQuant's and AWQ's folding)."""
        layer = self.model.layers[index]
        attn, mlp = layer.self_attn, layer.mlp

        if "self_attn.qkv_proj" in scales:
            layer.input_layernorm.weight.div_(scales["self_attn.qkv_proj"])
            attn.qkv_proj.weight.mul_(scales["self_attn.qkv_proj"])
        if "mlp.gate_up_proj" in scales:
            layer.post_attention_layernorm.weight.div_(scales["mlp.gate_up_proj"])
            mlp.gate_up_proj.weight.mul_(scales["mlp.gate_up_proj"])
        if "self_attn.o_proj" in scales:
            # o_proj's input channel (head h, dim d) is a mix of V rows of KV head h // group: the query
            # heads sharing a KV head must share a scale, which is then folded into that V row.
            group = attn.num_heads // attn.num_kv_heads
            shared = scales["self_attn.o_proj"].view(attn.num_kv_heads, group, attn.head_size).amax(dim=1)
            v_rows = slice(attn.q_size + attn.kv_size, None)
            attn.qkv_proj.weight[v_rows].div_(shared.reshape(-1, 1))
            if attn.qkv_proj.bias is not None:
                attn.qkv_proj.bias[v_rows].div_(shared.reshape(-1))
            attn.o_proj.weight.mul_(shared[:, None, :].expand(-1, group, -1).reshape(-1))
        if "mlp.down_proj" in scales:
            # down_proj's input is silu(gate) * up: scaling up's rows scales it exactly.
            mlp.gate_up_proj.weight[mlp.down_proj.in_features :].div_(scales["mlp.down_proj"][:, None])
            mlp.down_proj.weight.mul_(scales["mlp.down_proj"])

    @torch.no_grad()
    def smooth_lm_head_(self, input_absmax: torch.Tensor, alpha: float = 0.5) -> None:
        """``smooth_`` for the LM head, whose producer is the final norm (the head must be untied)."""
        self.lm_head.weight.mul_(self._fold_head_smoothing(self.lm_head.weight, input_absmax, alpha))

    @torch.no_grad()
    def quantize_lm_head_(
        self, method: QuantMethod, input_absmax: torch.Tensor | None = None, alpha: float = 0.5
    ) -> None:
        """Pack the LM head, smoothed first if ``input_absmax`` is given. A tied head is packed straight
        from the embedding's weight: it gets its own packed copy, never a float one."""
        head = self.lm_head
        embedding = self.model.embed_tokens
        if head is None and input_absmax is None:
            embedding.quantize_(method)
            if isinstance(embedding.packed, QuantizedLinear):  # the packed table computes the head too
                self.lm_head = Linear.from_packed(embedding.packed)
                return
        if head is None:
            head = Linear.from_weight(embedding.weight.detach())  # shares the storage
        scales = None if input_absmax is None else self._fold_head_smoothing(head.weight, input_absmax, alpha)
        head.quantize_(method, input_scales=scales)
        self.lm_head = head

    def _fold_head_smoothing(self, head_weight: torch.Tensor, input_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
        """SmoothQuant scales for the LM head, divided out of the final norm's weight; the caller folds them
        into the head."""
        scales = smoothing_scales(input_absmax, head_weight, alpha)
        self.model.norm.weight.div_(scales)
        self.final_hidden_scales = scales  # the output rows are h / scales from now on (a draft head reads them)
        return scales

    def quantize_(self, method: QuantMethod) -> None:
        """Pack every linear layer, the LM head included (a tied head gets its own packed copy), and the
        embedding if the method packs tables."""
        self.untie_lm_head_()
        for index in range(len(self.model.layers)):
            self.quantize_layer_(index, method)
        self.lm_head.quantize_(method)
        self.model.embed_tokens.quantize_(method)

    def quantize_layer_(self, index: int, method: QuantMethod) -> None:
        for module in self.model.layers[index].modules():
            if isinstance(module, Linear):
                module.quantize_(method)

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy HF-named weights in, fusing q/k/v and gate/up. Every parameter must be covered."""
        self.check_layer_names(weights)
        self.load_global_weights(weights)
        for index in range(len(self.model.layers)):
            self.load_layer_weights(index, weights)

    def check_layer_names(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Raise if ``weights`` names a decoder layer this model does not have (reads no tensor)."""
        num_layers = len(self.model.layers)
        stray = sorted(n for n in weights if n.startswith("model.layers.") and _layer_index(n) >= num_layers)
        if stray:
            raise ModelLoadError(f"checkpoint has an unexpected tensor {stray[0]!r}")

    def load_global_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """The embedding, final norm and LM head: everything outside the decoder layers."""
        self._load_part(weights, lambda name: not name.startswith("model.layers.") and name != HEAD_IDS)
        if self.head_token_ids is not None:
            self._load_head_token_ids(weights)

    @torch.no_grad()
    def _load_head_token_ids(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.head_token_ids.copy_(checked_head_token_ids(weights, self.head_token_ids.numel(), self.config.vocab_size))
        if self.config.tie_word_embeddings:  # the tied head is the embedding's rows of the kept ids
            rows = self.model.embed_tokens(self.head_token_ids.to(self.model.norm.weight.device))
            self.lm_head = Linear.from_weight(rows.detach().clone())

    def load_layer_weights(self, index: int, weights: Mapping[str, torch.Tensor]) -> None:
        """Decoder layer ``index`` alone; of a lazy mapping, only its tensors are read."""
        prefix = f"model.layers.{index}."
        self._load_part(weights, lambda name: name.startswith(prefix))

    @torch.no_grad()
    def _load_part(self, weights: Mapping[str, torch.Tensor], belongs: Callable[[str], bool]) -> None:
        params = {name: p for name, p in self.named_parameters() if belongs(name)}
        fused = _fuse_hf_weights({name: weights[name] for name in weights if belongs(name)}, self.config)
        packed: dict[str, BlockQuantized] = {}
        for name, tensor in fused.items():
            if name not in params:
                if name == "lm_head.weight" and self.lm_head is None:
                    continue  # some tied checkpoints still store the head
                raise ModelLoadError(f"checkpoint has an unexpected tensor {name!r}")
            if params[name].shape != tensor.shape:
                raise ModelLoadError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}"
                )
            if isinstance(tensor, BlockQuantized):
                packed[name] = tensor
            else:
                params[name].copy_(tensor)
        missing = sorted(set(params) - set(fused))
        if missing:
            raise ModelLoadError(f"checkpoint is missing tensors: {', '.join(missing[:5])}")
        for name, blocks in packed.items():  # after the floats: a packed linear takes its bias along
            self.get_submodule(name.removesuffix(".weight")).load_blocks_(blocks)


def _layer_index(name: str) -> int:
    """``i`` of ``model.layers.{i}.*``; a malformed index counts as out of range."""
    part = name.split(".")[2] if name.count(".") >= 2 else ""
    return int(part) if part.isdigit() else 1 << 62


def _fuse_hf_weights(weights: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    fused: dict[str, torch.Tensor] = {}
    groups = {
        "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    }
    consumed: set[str] = set()
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for target, parts in groups.items():
            for suffix in ("weight", "bias"):
                names = [f"{prefix}{p}.{suffix}" for p in parts]
                present = [n in weights for n in names]
                if not any(present):
                    continue
                if not all(present):
                    missing = names[present.index(False)]
                    raise ModelLoadError(f"checkpoint is missing tensor {missing!r}")
                fused[f"{prefix}{target}.{suffix}"] = _cat_rows([weights[n] for n in names])
                consumed.update(names)
    for name, tensor in weights.items():
        if name not in consumed and not name.endswith("rotary_emb.inv_freq"):
            fused[name] = tensor
    return fused


def _cat_rows(parts: list[torch.Tensor | BlockQuantized]) -> torch.Tensor | BlockQuantized:
    """Stack tensors along rows; packed parts stay packed when they share one format, else all go float."""
    if all(isinstance(p, BlockQuantized) for p in parts):
        formats = {(p.bits, p.group_size) for p in parts}
        if len(formats) == 1:
            return BlockQuantized.cat_rows(parts)
    return torch.cat([p.dequantize() if isinstance(p, BlockQuantized) else p for p in parts], dim=0)
