"""Tiny distillation models: a 2-layer teacher, a 1-layer student and one of another vocabulary, over a small
BPE tokenizer trained on a repetitive text, so a step takes milliseconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from corral.loader import save_hf_dir
from corral.models.spec import ModelConfig
from tests.conftest import tiny_weights

TEXT = "\n\n".join(f"def step_{i}(x):\n    \"\"\"Return x plus {i}, the quick brown fox.\"\"\"\n    return x + {i}"
                   for i in range(200))
FAST = ["--sources", "none", "--train-tokens", "512", "--heldout-tokens", "64", "--sequence-length", "32",
        "--batch-size", "2", "--grad-accum", "1", "--top-k", "8", "--steps", "3", "--checkpoint-every", "1"]


def make_tiny_dirs(root: Path) -> dict[str, Path]:
    """A 2-layer teacher, a 1-layer student, a student of another vocabulary, and a training text file."""
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    teacher = ModelConfig(architecture="llama", vocab_size=backend.get_vocab_size(), hidden_size=32,
                          intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                          tie_word_embeddings=True, eos_token_ids=(0,))
    configs = {"teacher": teacher, "student": dataclasses.replace(teacher, num_hidden_layers=1),
               "other-vocab": dataclasses.replace(teacher, num_hidden_layers=1, vocab_size=teacher.vocab_size + 8)}
    dirs = {}
    for seed, (name, config) in enumerate(configs.items()):
        dirs[name] = root / name
        save_hf_dir(dirs[name], config, tiny_weights(config, seed=seed))
        backend.save(str(dirs[name] / "tokenizer.json"))
        (dirs[name] / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    dirs["text"] = root / "train.txt"
    dirs["text"].write_text(TEXT)
    dirs["heldout"] = root / "heldout.txt"
    dirs["heldout"].write_text(TEXT[::-1])
    return dirs
