"""A training checkpoint that resumes exactly: the student's weights, AdamW's moments, the schedule's position,
the data position (optimizer steps taken: the window order is a function of the seed and the step) and
torch's RNG state, under a fingerprint of everything that shapes the trajectory.

A resumed run refuses a checkpoint whose fingerprint differs (another student, teacher, data, or
hyper-parameter), naming the first difference, rather than continuing a different run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from corral.compress.distill.config import DistillError

CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT_VERSION = 1


@dataclass
class TrainingState:
    step: int  # optimizer steps taken
    tokens_seen: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng_state: torch.Tensor
    step_losses: list[float]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A short content hash (what data a run trained on, without storing it in the fingerprint)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(work_dir: str, state: TrainingState, fingerprint: dict[str, Any]) -> str:
    """Write the checkpoint beside a temporary name and rename it: a kill mid-write keeps the previous one."""
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, CHECKPOINT_FILE)
    payload = {"version": _FORMAT_VERSION, "fingerprint": fingerprint, "step": state.step,
               "tokens_seen": state.tokens_seen,
               "weights": {name: t.detach().clone() for name, t in state.weights.items()},
               "optimizer": state.optimizer, "scheduler": state.scheduler, "rng_state": state.rng_state,
               "step_losses": state.step_losses}
    torch.save(payload, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def load_checkpoint(work_dir: str, fingerprint: dict[str, Any]) -> TrainingState:
    """The checkpoint in ``work_dir``, if it was written by a run with this ``fingerprint``."""
    path = os.path.join(work_dir, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise DistillError(f"--resume: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise DistillError(f"--resume: cannot read {path}: {e}") from e
    if not isinstance(payload, dict) or payload.get("version") != _FORMAT_VERSION:
        raise DistillError(f"--resume: {path} is not a corral distill checkpoint of format {_FORMAT_VERSION}")
    stored = payload["fingerprint"]
    for key in sorted(set(stored) | set(fingerprint)):
        if stored.get(key) != fingerprint.get(key):
            raise DistillError(f"--resume: {path} belongs to another run: its {key} is {stored.get(key)!r}, "
                               f"this run's is {fingerprint.get(key)!r}")
    return TrainingState(payload["step"], payload["tokens_seen"], payload["weights"], payload["optimizer"],
                         payload["scheduler"], payload["rng_state"], list(payload["step_losses"]))
