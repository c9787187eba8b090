"""Importance scores on disk, so that pruning the same model to another shape skips the calibration pass.

A file is named by a hash of what determines the scores: the model's files (path, size, modification
time: rewriting a checkpoint in place invalidates its scores), the calibration token ids, and
``SCORES_VERSION`` (bump it when ``importance.py`` changes what it computes).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Callable

import torch
from safetensors.torch import load_file, save_file

from corral.compress.prune.importance import ImportanceScores

SCORES_VERSION = 1


def scores_key(model_path: str, calibration: torch.Tensor) -> str:
    """A hex digest of the model's files and the calibration ids ``[num_seqs, tokens]``."""
    digest = hashlib.sha256(f"prune-scores-v{SCORES_VERSION}".encode())
    files = [model_path] if os.path.isfile(model_path) else sorted(
        glob.glob(os.path.join(glob.escape(model_path), "*.safetensors")) + [os.path.join(model_path, "config.json")]
    )
    for path in files:
        stat = os.stat(path)
        digest.update(json.dumps([os.path.realpath(path), stat.st_size, stat.st_mtime_ns]).encode())
    digest.update(json.dumps(list(calibration.shape)).encode())
    digest.update(calibration.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:32]


def load_or_compute(
    cache_dir: str | None, key: str, compute: Callable[[], ImportanceScores]
) -> tuple[ImportanceScores, bool]:
    """The cached scores under ``key`` (and True), or ``compute()``'s, stored there (and False).
    ``cache_dir`` None: always compute, store nothing."""
    if cache_dir is None:
        return compute(), False
    path = os.path.join(cache_dir, f"{key}.safetensors")
    if os.path.isfile(path):
        stored = load_file(path)
        num_tokens = int(stored.pop("num_tokens").item())
        return ImportanceScores.from_tensors(stored, num_tokens), True
    scores = compute()
    os.makedirs(cache_dir, exist_ok=True)
    tensors = {**{name: t.contiguous() for name, t in scores.tensors().items()},
               "num_tokens": torch.tensor(scores.num_tokens)}
    handle, staging = tempfile.mkstemp(suffix=".safetensors", dir=cache_dir)
    os.close(handle)
    save_file(tensors, staging)
    os.replace(staging, path)  # atomic: a concurrent reader sees the whole file or none
    return scores, False
