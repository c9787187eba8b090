"""``quantize_checkpoint``: every method writes a directory that loads packed and generates; round-to-nearest
is stored bit for bit (against a reference written here from the definition); on held-out text AWQ and GPTQ
stay closer to the float model than round-to-nearest, and their end-to-end tuning brings them closer still;
bad input leaves nothing behind."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from corral import LLM, SamplingParams
from corral.compress.quantize import quantize_checkpoint
from corral.compress.tuning import TuningConfig
from corral.config import QUANTIZE_METHODS
from corral.errors import ConfigError, QuantizationError
from corral.loader import load_checkpoint, load_tokenizer, open_checkpoint
from corral.models.calibration import sequence_logits
from corral.quantization.blockwise import BlockLinear
from corral.quantization.corpus import stdlib_docstrings

CALIBRATION = {"calibration_tokens": 384, "sequence_length": 128}
TUNING = TuningConfig(steps=4, num_tokens=512, sequence_length=128, sequences_per_step=2)
TUNED = ("awq-int4", "gptq-int4")
HELDOUT_TOKENS, HELDOUT_WINDOW = 1024, 256


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    """method -> (directory, report), each written once for the module."""
    root = tmp_path_factory.mktemp("quantized")
    return {
        method: (out, quantize_checkpoint(tiny_model_dir, method, out, group_size=32, tuning=TUNING, **CALIBRATION))
        for method in QUANTIZE_METHODS
        for out in [str(root / method)]
    }


@pytest.fixture(scope="module")
def untuned(tiny_model_dir, tmp_path_factory):
    """method -> directory of AWQ and GPTQ without the end-to-end tuning: the layer-wise methods alone."""
    root = tmp_path_factory.mktemp("untuned")
    return {
        method: quantize_checkpoint(tiny_model_dir, method, str(root / method), group_size=32, tuning=None,
                                    **CALIBRATION).out
        for method in TUNED
    }


@pytest.fixture(scope="module")
def heldout_kl(tiny_model_dir, quantized, untuned):
    """Name -> mean KL(float || quantized) per token of the next-token distributions on held-out text (the
    quantizer never sees it), each directory run dequantized (quantization="none"), as is the float one."""
    ids = load_tokenizer(tiny_model_dir).encode(stdlib_docstrings("heldout"))[:HELDOUT_TOKENS]
    windows = [ids[start : start + HELDOUT_WINDOW] for start in range(0, len(ids), HELDOUT_WINDOW)]

    def log_probs(path: str) -> list[torch.Tensor]:
        llm = LLM(model=path, quantization="none", kv_cache_memory=8 * 1024**2, max_model_len=512)
        model = llm.engine.core.runner.model
        return [F.log_softmax(sequence_logits(model, window).float(), dim=-1) for window in windows]

    reference = log_probs(tiny_model_dir)

    def kl(path: str) -> float:
        pairs = zip(log_probs(path), reference, strict=True)
        return sum(float((ref.exp() * (ref - got)).sum()) for got, ref in pairs) / len(ids)

    directories = {method: quantized[method][0] for method in ("rtn-int4", *TUNED)}
    directories.update({f"{method} untuned": out for method, out in untuned.items()})
    return {name: kl(out) for name, out in directories.items()}


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_written_directory_loads_packed_and_generates(quantized, method):
    out, report = quantized[method]
    assert json.load(open(os.path.join(out, "config.json")))["quantization_config"]["method"] == method
    llm = LLM(model=out, kv_cache_memory=8 * 1024**2, max_model_len=256)
    model = llm.engine.core.runner.model
    assert all(isinstance(layer.packed, BlockLinear) for layer in model.modules() if hasattr(layer, "packed")
               and layer.packed is not None)
    assert isinstance(model.model.embed_tokens.packed, BlockLinear)
    [output] = llm.generate(["def add(a, b):"], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert len(output.outputs[0].token_ids) == 6
    # the same directory dequantized to float computes nearly the same next token distribution
    exact = LLM(model=out, quantization="none", kv_cache_memory=8 * 1024**2, max_model_len=256)
    [again] = exact.generate(["def add(a, b):"], SamplingParams(max_tokens=1, temperature=0))
    assert again.outputs[0].token_ids[0] == output.outputs[0].token_ids[0]
    bits = 8 if method == "int8" else 4
    assert report.packed_format.bits == bits


def reference_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 round-to-nearest from its definition (llama.cpp's Q4_1): per group of ``group_size``
    along a row, min = min(w) and scale = (max(w) - min(w)) / 15, both stored as float16; the codes
    round((w - min) / scale) against those stored float16 values, clamped to 0..15 (a constant group, scale
    0, has codes 0). Returns (codes [rows, cols] uint8, scales, mins)."""
    rows, cols = w.shape
    scales = torch.empty(rows, cols // group_size, dtype=torch.float16)
    mins = torch.empty_like(scales)
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    for g in range(cols // group_size):
        part = w[:, g * group_size : (g + 1) * group_size]
        low, high = part.min(dim=1).values, part.max(dim=1).values
        scales[:, g], mins[:, g] = ((high - low) / 15).half(), low.half()
        scale, minimum = scales[:, g].float(), mins[:, g].float()
        divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round((part - minimum[:, None]) / divisor[:, None]).clamp(0, 15)
        codes[:, g * group_size : (g + 1) * group_size] = q.to(torch.uint8)
    return codes, scales, mins


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two int4 codes per byte within each block of 32 codes: byte j of a block holds code j in its low
    nibble and code j + 16 in its high one (llama.cpp's layout, which the packed format documents)."""
    rows, cols = codes.shape
    qweight = torch.empty(rows, cols // 2, dtype=torch.uint8)
    for block in range(cols // 32):
        low_nibbles = codes[:, 32 * block : 32 * block + 16]
        high_nibbles = codes[:, 32 * block + 16 : 32 * block + 32]
        qweight[:, 16 * block : 16 * block + 16] = low_nibbles + 16 * high_nibbles
    return qweight


def reference_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 round-to-nearest with one scale per row (llama.cpp's Q8_0 over the whole row):
    scale = max|w| / 127 stored as float16, codes round(w / scale) against it, clamped to -127..127.
    Returns (qweight, scales [rows, 1])."""
    scales = (w.abs().max(dim=1, keepdim=True).values / 127).half()
    divisor = torch.where(scales == 0, torch.ones_like(scales), scales).float()
    return torch.round(w / divisor).clamp(-127, 127).to(torch.int8), scales


def read_safetensors(directory: str) -> dict[str, torch.Tensor]:
    """Every tensor of ``directory``'s model.safetensors, read by the safetensors library itself."""
    with safe_open(os.path.join(directory, "model.safetensors"), "pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}


@pytest.mark.parametrize("method", ["rtn-int4", "int8"])
def test_round_to_nearest_is_stored_bit_for_bit(quantized, tiny_model_dir, method):
    """Guards the stored qweight, scales and mins of round-to-nearest (and the dequantized load of them)
    against ``reference_int4`` / ``reference_int8_rows``, for every packed matrix of the directory."""
    out, _ = quantized[method]
    original = read_safetensors(tiny_model_dir)
    stored = read_safetensors(out)
    _, loaded = open_checkpoint(out)  # without keep_quantized: float, as the blocks dequantize
    packed = sorted(name.removesuffix(".qweight") for name in stored if name.endswith(".qweight"))
    assert packed == sorted(name.removesuffix(".weight") for name, w in original.items() if w.dim() == 2)
    for prefix in packed:
        w = original[prefix + ".weight"].float()
        if method == "int8" or "embed" in prefix:  # the token embedding is int8 per row in every method
            qweight, scales = reference_int8_rows(w)
            assert f"{prefix}.mins" not in stored
            assert stored[f"{prefix}.qweight"].dtype == torch.int8
            dequantized = qweight.float() * scales.float()
        else:
            codes, scales, mins = reference_int4(w, 32)
            qweight = pack_nibbles(codes)
            assert stored[f"{prefix}.mins"].dtype == torch.float16
            assert torch.equal(stored[f"{prefix}.mins"], mins), prefix
            per_column = scales.float().repeat_interleave(32, dim=1), mins.float().repeat_interleave(32, dim=1)
            dequantized = codes.float() * per_column[0] + per_column[1]
        assert stored[f"{prefix}.scales"].dtype == torch.float16
        assert torch.equal(stored[f"{prefix}.qweight"], qweight), prefix
        assert torch.equal(stored[f"{prefix}.scales"], scales), prefix
        assert torch.equal(loaded[prefix + ".weight"], dequantized), prefix


@pytest.mark.parametrize("method", TUNED)
def test_calibrated_methods_beat_round_to_nearest_on_heldout_text(heldout_kl, method):
    """Guards AWQ and GPTQ (with and without tuning) against round-to-nearest, measured independently of the
    quantizer's own calibration report: KL to the float model on held-out docstrings."""
    rtn = heldout_kl["rtn-int4"]
    # measured: rtn 0.1046; awq 0.0559 untuned (0.53x), 0.0533 tuned; gptq 0.0377 (0.36x), 0.0363 tuned
    assert heldout_kl[f"{method} untuned"] < 0.7 * rtn, heldout_kl
    assert heldout_kl[method] < 0.7 * rtn, heldout_kl


def test_gptq_rounding_beats_awq_clipping_on_the_same_input_scales(heldout_kl):
    """Guards GPTQ's error-compensating rounding inside gptq-int4: it shares AWQ's input scales, which alone
    beat round-to-nearest, so the test above cannot see it; on held-out text it beats AWQ's clipping."""
    # measured untuned: gptq 0.0377, awq 0.0559 (0.67x); with GPTQ's rounding replaced by round-to-nearest
    # on the same scales, gptq-int4 measured 0.0644
    assert heldout_kl["gptq-int4 untuned"] < 0.85 * heldout_kl["awq-int4 untuned"], heldout_kl


def test_calibration_report_covers_every_linear(quantized):
    """Guards the report's bookkeeping (what it says about quality is checked on held-out text above)."""
    for method in QUANTIZE_METHODS:
        report = quantized[method][1]
        assert report.num_calibration_tokens == 384
        assert set(report.output_error) == set(report.rtn_output_error) and len(report.output_error) == 8
    assert quantized["rtn-int4"][1].error_vs_rtn == 1.0  # round-to-nearest is its own baseline


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_calibrated_methods_then_tune_their_groups_end_to_end(quantized, heldout_kl, method):
    """Guards the tuning stage: it runs for AWQ and GPTQ only, and on held-out text (not the tuning batches
    its report measures) the tuned directory is closer to the float model than the untuned one."""
    tuning = quantized[method][1].tuning
    if method not in TUNED:
        assert tuning is None
        return
    assert tuning.steps == TUNING.steps
    # measured with 4 steps: awq 0.0559 -> 0.0533 (0.954x), gptq 0.0377 -> 0.0363 (0.964x)
    assert heldout_kl[method] < 0.98 * heldout_kl[f"{method} untuned"], heldout_kl


@pytest.mark.parametrize("method", QUANTIZE_METHODS)
def test_activation_aware_methods_fold_input_scales_into_the_norms(quantized, tiny_model_dir, method):
    _, original = load_checkpoint(tiny_model_dir)
    _, stored = open_checkpoint(quantized[method][0])
    names = [f"model.layers.{i}.{norm}.weight" for i in range(2)
             for norm in ("input_layernorm", "post_attention_layernorm")]
    folded = [not torch.equal(stored[name], original[name]) for name in names]
    assert folded == [method in ("awq-int4", "gptq-int4")] * len(names)


def test_weight_memory_drops(quantized, tiny_model_dir):
    """Guards the packed size, counted from the tensors in the written files; the report states the same."""
    def stored_bytes(directory: str) -> int:
        return sum(t.nbytes for t in read_safetensors(directory).values())

    float_bytes = stored_bytes(tiny_model_dir)
    int8, int4 = stored_bytes(quantized["int8"][0]), stored_bytes(quantized["rtn-int4"][0])
    assert int8 < 0.3 * float_bytes  # measured 0.26: the int8 embedding dominates the tiny model
    assert int4 < int8
    for out, report in quantized.values():
        assert report.weight_bytes == stored_bytes(out)


def activation_bits_in_use(llm: LLM) -> set[int]:
    model = llm.engine.core.runner.model
    return {m.packed.activation_bits for m in model.modules() if isinstance(getattr(m, "packed", None), BlockLinear)}


def test_directories_run_with_their_activation_bits_unless_overridden(quantized, tiny_model_dir, tmp_path):
    out, report = quantized["awq-int4"]
    assert report.packed_format.activation_bits == 16  # the default: the weights are the only rounding
    assert json.load(open(os.path.join(out, "config.json")))["quantization_config"]["activation_bits"] == 16
    assert activation_bits_in_use(LLM(model=out, kv_cache_memory=8 * 1024**2, max_model_len=256)) == {16}
    fast = LLM(model=out, kv_cache_memory=8 * 1024**2, max_model_len=256, activation_bits=8)
    assert activation_bits_in_use(fast) == {8}
    eight = str(tmp_path / "rtn8")
    quantize_checkpoint(tiny_model_dir, "rtn-int4", eight, group_size=32, activation_bits=8, **CALIBRATION)
    assert activation_bits_in_use(LLM(model=eight, kv_cache_memory=8 * 1024**2, max_model_len=256)) == {8}
    with pytest.raises(ConfigError, match="applies to block-quantized weights"):
        LLM(model=out, quantization="none", activation_bits=16, kv_cache_memory=8 * 1024**2, max_model_len=256)


def test_stored_weights_run_as_stored_or_dequantized_only(quantized):
    out, _ = quantized["rtn-int4"]
    with pytest.raises(ConfigError, match="already quantized"):
        LLM(model=out, quantization="int8", kv_cache_memory=8 * 1024**2, max_model_len=256)


def test_existing_output_is_refused_untouched(tiny_model_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QuantizationError, match="already exists"):
        quantize_checkpoint(tiny_model_dir, "rtn-int4", str(out), group_size=32)
    assert os.listdir(out) == ["keep.txt"]


def test_unsupported_group_size_is_refused_before_any_work(tiny_model_dir, tmp_path):
    with pytest.raises(QuantizationError, match="not a multiple of the group size 128"):
        quantize_checkpoint(tiny_model_dir, "gptq-int4", str(tmp_path / "out"), group_size=128)
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_nothing_behind(tiny_model_dir, tmp_path, monkeypatch):
    from corral.text.tokenizer import Tokenizer

    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        quantize_checkpoint(tiny_model_dir, "rtn-int4", str(tmp_path / "out"), group_size=32)
    assert os.listdir(tmp_path) == []
