"""Dequantize the default GGUF into a plain Hugging Face checkpoint for vLLM, which cannot run it.

transformers loads the GGUF (``from_pretrained(dir, gguf_file=name)``, needs accelerate) but refuses to
``save_pretrained`` a GGUF-loaded model, so the weights are copied into a fresh ``LlamaForCausalLM``
built from the same config and that is saved (float32: the dequantized Q4_1 values, unrounded), with
the tokenizer. Run by the project's venv (it has transformers):

    .venv/bin/python bench/convert_gguf.py --out .bench/smollm2-hf [--gguf PATH]
"""

from __future__ import annotations

import argparse
import os

import torch


def convert(gguf: str, out: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # "gguf" would make vLLM look for a GGUF quantizer
        del config.quantization_config
    plain = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head may be absent from the state dict; anything else missing is an error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    os.makedirs(out, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    print(f"wrote {out}: {sum(p.numel() for p in plain.parameters()) / 1e6:.1f} M parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".bench/smollm2-hf")
    parser.add_argument("--gguf", default=None, help="default: corral's default model")
    args = parser.parse_args()
    if args.gguf is None:
        from corral.loader.default_model import default_model_path

        args.gguf = default_model_path()
    convert(args.gguf, args.out)


if __name__ == "__main__":
    main()
