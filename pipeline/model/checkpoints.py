"""The training loop's checkpoints on disk: one folder per epoch holding the whole training
state (`state.pt`), written whole or not at all, the latest few kept. Ray Train copies a worker's
folder into its storage; in local mode the folders under the artifact root are the resume point."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CHECKPOINT_FILE = "state.pt"
KEPT_CHECKPOINTS = 2
"""Epoch checkpoints kept: Ray Train's CheckpointConfig on the worker path, the loop in local mode."""
_EPOCH_PREFIX = "epoch-"


@contextmanager
def checkpoint_folder(checkpoint_dir: str | None, epoch: int) -> Iterator[str]:
    """A temporary folder Ray Train copies into its storage, or, in local mode, a kept one."""
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory() as directory:
            yield directory
        return
    directory = os.path.join(checkpoint_dir, epoch_folder(epoch))
    os.makedirs(directory, exist_ok=True)
    yield directory
    for older in _kept_epochs(checkpoint_dir)[:-KEPT_CHECKPOINTS]:
        shutil.rmtree(os.path.join(checkpoint_dir, older))


def epoch_folder(epoch: int) -> str:
    return f"{_EPOCH_PREFIX}{epoch:04d}"


def _kept_epochs(checkpoint_dir: str) -> list[str]:
    """The epoch folders whose checkpoint file is complete, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(name for name in os.listdir(checkpoint_dir) if name.startswith(_EPOCH_PREFIX)
                  and os.path.isfile(os.path.join(checkpoint_dir, name, CHECKPOINT_FILE)))


def latest_kept_checkpoint(checkpoint_dir: str | None):
    """Local mode: the newest complete checkpoint an earlier process of this cache key left
    (it was SIGKILLed, or its driver died), as a Ray Train Checkpoint; None to start afresh."""
    import ray.train

    kept = _kept_epochs(checkpoint_dir) if checkpoint_dir else []
    return ray.train.Checkpoint.from_directory(os.path.join(checkpoint_dir, kept[-1])) if kept \
        else None


def save_checkpoint(payload: dict, directory: str) -> None:
    """Written under a temporary name and renamed: a kill mid-write leaves no file that looks
    complete (`_kept_epochs` only counts finished ones)."""
    partial = os.path.join(directory, CHECKPOINT_FILE + ".partial")
    torch.save(payload, partial)
    os.replace(partial, os.path.join(directory, CHECKPOINT_FILE))
