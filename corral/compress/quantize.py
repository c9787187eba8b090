"""``corral quantize``: a checkpoint -> a directory of packed weights (``loader.packed``) that ``LLM`` and
``corral serve`` load as stored.

The model is built one decoder layer at a time, as the quantized load builds it (``models/loading.py``):
layer i is read in float, the inputs of its four linears are recorded on calibration text that has passed
through the already-packed layers 0..i-1, the layer is packed by the chosen method, and the packed layer
computes layer i+1's inputs. Methods:

- ``int8``: symmetric int8 with one scale per output channel, rounded to nearest;
- ``rtn-int4``: asymmetric int4 in groups, rounded to nearest;
- ``awq-int4``: AWQ's input-channel scales (folded into the producing norm / V / up rows) and group
  clipping, searched on the calibration inputs, then int4 in groups (``quantization/awq.py``);
- ``gptq-int4``: AWQ's input scales as above (searched on at most ``_SCALE_SEARCH_TOKENS`` evenly spaced
  calibration rows: the Hessians want many more tokens than the scales do), then GPTQ's error-compensating
  rounding of the scaled weights against the Hessian of the scaled inputs, loudest input column first, on
  group grids searched against that Hessian (``quantization/gptq.py``).

After either calibrated int4 method, every group's scale and min (not its codes) is tuned end to end
toward the float model's next-token distribution (``compress/tuning.py``), unless ``tuning`` is None.

The token embedding (and so a tied LM head, or an untied one) is int8 with a scale per row in every method.
Calibration text is the train split of the standard library's docstrings; evaluation uses the held-out one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from corral.compress.tuning import DEFAULT_TUNING, TuningConfig, TuningReport, tune_group_parameters
from corral.config import (
    CALIBRATION_TOKENS,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_QUANTIZED_ACTIVATION_BITS,
    QUANTIZE_METHODS,
)
from corral.errors import QuantizationError
from corral.layers.linear import Linear
from corral.loader import PackedFormat, load_tokenizer, open_checkpoint, save_hf_dir
from corral.models.calibration import DenseSequence, recording_inputs
from corral.models.llama import LlamaForCausalLM
from corral.models.registry import model_class
from corral.models.spec import ModelConfig
from corral.platform import release_free_memory
from corral.quantization.awq import clip_groups, search_clip_ratios, search_input_scales
from corral.quantization.blockwise import (
    ACTIVATION_BLOCK,
    BlockLinear,
    BlockQuantized,
    quantize_int4,
    quantize_int8,
)
from corral.quantization.corpus import stdlib_docstrings
from corral.quantization.gptq import HessianAccumulator, gptq_int4
from corral.text.tokenizer import Tokenizer

_ERROR_SAMPLE_TOKENS = 1024  # calibration rows on which each linear's output error is reported
_SCALE_SEARCH_TOKENS = 4096  # calibration rows on which AWQ's input scales are searched (evenly spaced)
# GPTQ's damping, x mean(diag H): on the default model 0.1 gave perplexity 11.143, against 11.203 at the
# usual 0.01 (0.05: 11.286, 0.15: 11.145, 0.3: 11.181)
_GPTQ_DAMP = 0.1
TUNED_METHODS = ("awq-int4", "gptq-int4")


@dataclass
class QuantizeReport:
    """What ``quantize_checkpoint`` wrote and how close each packed linear stays to the float one."""

    out: str
    packed_format: PackedFormat
    weight_bytes: int  # the checkpoint's tensors, packed and float
    num_calibration_tokens: int
    # per linear (``model.layers.{i}.{name}``): output MSE on calibration inputs, of the method and of
    # round-to-nearest at the same bits and group size
    output_error: dict[str, float] = field(default_factory=dict)
    rtn_output_error: dict[str, float] = field(default_factory=dict)
    tuning: TuningReport | None = None  # the end-to-end stage, where it ran

    @property
    def error_vs_rtn(self) -> float:
        """Summed output error of the method over that of round-to-nearest (below 1: better)."""
        rtn = sum(self.rtn_output_error.values())
        return sum(self.output_error.values()) / rtn if rtn > 0 else 1.0


def quantize_checkpoint(
    model: str | None,
    method: str,
    out: str,
    group_size: int = 64,
    calibration_tokens: int | None = None,
    sequence_length: int = 512,
    on_layer: Callable[[int, int], None] | None = None,
    tuning: TuningConfig | None = DEFAULT_TUNING,
    on_tuning_step: Callable[[int, int], None] | None = None,
    activation_bits: int = DEFAULT_QUANTIZED_ACTIVATION_BITS,
) -> QuantizeReport:
    """Quantize ``model`` (None: the default model) with ``method`` into the new directory ``out``, written
    to a temporary directory beside it and renamed, so ``out`` never holds half a checkpoint.
    ``on_layer(done, total)`` is called after each decoder layer, ``on_tuning_step(done, total)`` after each
    step of the end-to-end tuning (``awq-int4`` and ``gptq-int4``; ``tuning=None`` skips it). The directory
    runs with its linears' inputs rounded to ``activation_bits``, and the searches measure errors so."""
    if method not in QUANTIZE_METHODS:
        raise QuantizationError(f"unknown method {method!r} (choose from {', '.join(QUANTIZE_METHODS)})")
    if os.path.exists(out):
        raise QuantizationError(f"{out} already exists: choose a new output directory")
    packed_format = PackedFormat(
        method, 8 if method == "int8" else 4, None if method == "int8" else group_size, activation_bits
    )
    config, weights = open_checkpoint(model, torch.float32)
    if config.draft_vocab_size is not None:
        raise QuantizationError(f"{model} is a draft with a reduced LM head, which corral quantize does not write: "
                                "quantize it as it loads (speculative_config quantization int8 or int4)")
    _check_shapes(config, packed_format)
    tokenizer = load_tokenizer(model)
    if calibration_tokens is None:
        calibration_tokens = CALIBRATION_TOKENS.get(method, DEFAULT_CALIBRATION_TOKENS)
    calibration = _calibration_sequences(tokenizer, calibration_tokens, sequence_length, config)
    report = QuantizeReport(out, packed_format, 0, sum(len(ids) for ids in calibration))

    float_model = model_class(config)(config).float().eval()
    float_model.check_layer_names(weights)
    float_model.load_global_weights(weights)
    sequences = [DenseSequence(float_model, ids) for ids in calibration]
    hiddens = [sequence.embed() for sequence in sequences]
    state: dict[str, torch.Tensor | BlockQuantized] = {}
    for index in range(config.num_hidden_layers):
        float_model.load_layer_weights(index, weights)
        linears = float_model.input_scaled_linears(index)
        layer = float_model.model.layers[index]
        with recording_inputs(linears) as recorded, torch.inference_mode():
            for sequence, hidden in zip(sequences, hiddens, strict=True):
                layer(sequence.rope, hidden, sequence.kv_cache, sequence.metadata, sequence.backend)
        inputs = {name: torch.cat(parts) for name, parts in recorded.items()}
        blocks = _pack_layer(float_model, index, inputs, packed_format, report)
        state.update(_layer_state(float_model, index, blocks, config))
        hiddens = [sequence.layer(index, hidden) for sequence, hidden in zip(sequences, hiddens, strict=True)]
        release_free_memory()
        if on_layer is not None:
            on_layer(index + 1, config.num_hidden_layers)

    state["model.norm.weight"] = float_model.model.norm.weight.detach().clone()
    state["model.embed_tokens.weight"] = quantize_int8(float_model.model.embed_tokens.weight, None)
    if float_model.lm_head is not None:
        state["lm_head.weight"] = quantize_int8(float_model.lm_head.weight, None)
    if tuning is not None and tuning.steps > 0 and method in TUNED_METHODS:
        del float_model, sequences, hiddens
        release_free_memory()
        ids = tokenizer.encode(stdlib_docstrings("train"))[: tuning.num_tokens]
        length = min(tuning.sequence_length, len(ids))
        token_sequences = torch.tensor(ids[: len(ids) // length * length]).view(-1, length)
        report.tuning = tune_group_parameters(config, weights.materialize(), state, token_sequences, tuning,
                                              on_tuning_step)
    del weights
    report.weight_bytes = sum(_nbytes(t) for t in state.values())
    _write_atomically(out, config, state, packed_format, tokenizer)
    return report


def _check_shapes(config: ModelConfig, packed_format: PackedFormat) -> None:
    """Refuse, before any work, a model whose linears the format cannot pack."""
    widths = {"hidden": config.hidden_size, "intermediate": config.intermediate_size,
              "attention output": config.num_attention_heads * config.head_size}
    group = packed_format.group_size or ACTIVATION_BLOCK
    for what, width in widths.items():
        if width % group or width % ACTIVATION_BLOCK:
            raise QuantizationError(
                f"{packed_format.method}: the {what} width {width} is not a multiple of the group size {group}"
                + ("" if packed_format.group_size else f" (int8 needs multiples of {ACTIVATION_BLOCK})")
            )


def _calibration_sequences(
    tokenizer: Tokenizer, num_tokens: int, sequence_length: int, config: ModelConfig
) -> list[list[int]]:
    if num_tokens < 1 or not 1 <= sequence_length <= config.max_position_embeddings:
        raise QuantizationError(
            f"calibration needs tokens >= 1 and a sequence length in 1..{config.max_position_embeddings}"
        )
    ids = tokenizer.encode(stdlib_docstrings("train"))[:num_tokens]
    return [ids[start : start + sequence_length] for start in range(0, len(ids), sequence_length)]


@torch.no_grad()
def _pack_layer(
    model: LlamaForCausalLM,
    index: int,
    inputs: Mapping[str, torch.Tensor],
    packed_format: PackedFormat,
    report: QuantizeReport,
) -> dict[str, BlockQuantized]:
    """Pack the linears of layer ``index`` in place (their float weights are dropped); returns their blocks."""
    linears = model.input_scaled_linears(index)
    method, group, activation_bits = packed_format.method, packed_format.group_size, packed_format.activation_bits
    prefix = f"model.layers.{index}."
    sample = {name: x[:: max(1, len(x) // _ERROR_SAMPLE_TOKENS)] for name, x in inputs.items()}
    rtn: dict[str, BlockQuantized] = {}  # round-to-nearest: the baseline every method is compared with
    for name, linear in linears.items():
        rtn[name] = quantize_int8(linear.weight, None) if method == "int8" else quantize_int4(linear.weight, group)
        rtn_linear = BlockLinear(rtn[name], linear.bias, activation_bits)
        report.rtn_output_error[prefix + name] = _output_error(rtn_linear, sample[name], linear)
    if method in ("awq-int4", "gptq-int4"):
        search = {name: x[:: max(1, len(x) // _SCALE_SEARCH_TOKENS)] for name, x in inputs.items()}
        input_scales = _apply_awq_scales(model, index, search, group, activation_bits)
        inputs = {name: x / input_scales[name] for name, x in inputs.items()}
        sample = {name: x / input_scales[name] for name, x in sample.items()}

    blocks: dict[str, BlockQuantized] = {}
    for name, linear in linears.items():
        weight = linear.weight.detach()
        if method in ("int8", "rtn-int4"):
            blocks[name] = rtn[name]
        elif method == "awq-int4":
            ratios = search_clip_ratios(inputs[name], weight, group)
            if name == "self_attn.qkv_proj":  # clipping queries and keys distorts every attention score
                attn = model.model.layers[index].self_attn
                ratios[: attn.q_size + attn.kv_size] = 1.0
            blocks[name] = quantize_int4(clip_groups(weight, ratios, group), group)
        else:
            hessian = HessianAccumulator(weight.shape[1])
            hessian.add(inputs[name])
            blocks[name] = gptq_int4(weight, hessian.hessian(), group, damp=_GPTQ_DAMP, act_order=True)
        packed = BlockLinear(blocks[name], linear.bias, activation_bits)
        report.output_error[prefix + name] = _output_error(packed, sample[name], linear)
        linear.load_blocks_(blocks[name], activation_bits)  # the next layers calibrate on its outputs
    return blocks


def _apply_awq_scales(
    model: LlamaForCausalLM, index: int, inputs: Mapping[str, torch.Tensor], group_size: int, activation_bits: int
) -> dict[str, torch.Tensor]:
    """Search AWQ's input scales for each linear of layer ``index`` on its float inputs and fold them in."""
    scales: dict[str, torch.Tensor] = {}
    for name, linear in model.input_scaled_linears(index).items():
        tie = model.share_o_proj_scales if name == "self_attn.o_proj" else None
        scales[name], _, _ = search_input_scales(inputs[name], linear.weight, group_size, tie, activation_bits)
    model.scale_layer_inputs_(index, scales)
    return scales


def _layer_state(
    model: LlamaForCausalLM, index: int, blocks: Mapping[str, BlockQuantized], config: ModelConfig
) -> dict[str, torch.Tensor | BlockQuantized]:
    """Layer ``index`` under HF names: its norms, and its fused linears' blocks split back into q/k/v and
    gate/up (rows are independent, so splitting is exact)."""
    prefix = f"model.layers.{index}."
    layer = model.model.layers[index]
    attn = layer.self_attn
    state: dict[str, torch.Tensor | BlockQuantized] = {
        prefix + "input_layernorm.weight": layer.input_layernorm.weight.detach().clone(),
        prefix + "post_attention_layernorm.weight": layer.post_attention_layernorm.weight.detach().clone(),
        prefix + "self_attn.o_proj.weight": blocks["self_attn.o_proj"],
        prefix + "mlp.down_proj.weight": blocks["mlp.down_proj"],
    }
    qkv_sizes = {"q_proj": attn.q_size, "k_proj": attn.kv_size, "v_proj": attn.kv_size}
    gate_up_sizes = {"gate_proj": config.intermediate_size, "up_proj": config.intermediate_size}
    for fused, sizes, owner in (("self_attn.qkv_proj", qkv_sizes, "self_attn"), ("mlp.gate_up_proj", gate_up_sizes, "mlp")):
        start = 0
        for part, size in sizes.items():
            rows = torch.arange(start, start + size)
            state[f"{prefix}{owner}.{part}.weight"] = blocks[fused].take_rows(rows)
            bias = model.get_submodule(prefix + fused).packed.bias
            if bias is not None:
                state[f"{prefix}{owner}.{part}.bias"] = bias[start : start + size].clone()
            start += size
    return state


def _output_error(packed: BlockLinear, inputs: torch.Tensor, float_linear: Linear) -> float:
    """Mean squared difference of the packed and the float product on ``inputs``."""
    return (packed.apply(inputs) - float_linear(inputs)).pow(2).mean().item()


def _nbytes(tensor: torch.Tensor | BlockQuantized) -> int:
    return tensor.nbytes() if isinstance(tensor, BlockQuantized) else tensor.nbytes


def _write_atomically(
    out: str,
    config: ModelConfig,
    state: Mapping[str, torch.Tensor | BlockQuantized],
    packed_format: PackedFormat,
    tokenizer: Tokenizer,
) -> None:
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", dir=parent)
    try:
        save_hf_dir(staging, config, state, packed_format)
        tokenizer.save_pretrained(staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 is for the staging, not for the checkpoint
        os.rename(staging, out)  # fails, rather than merging, if out appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
