"""Search progress on disk, so an interrupted search can resume: the record so far plus fingerprints of its inputs.

`multipruner_progress.json` holds the search configuration, a SHA-256 of the dense model's weights (taken before any
reordering), a SHA-256 of the calibration token ids, and the pruning record up to the last finished step. It is
rewritten atomically after every step, so a crash at any moment leaves either the previous or the new version.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch
from torch import nn

from .record import PruningRecord
from .utils import atomic_write_text, read_json

PROGRESS_NAME = "multipruner_progress.json"
PROGRESS_FORMAT = "optimum-multipruner-progress"


def _update_with_tensor(digest: "hashlib._Hash", name: str, tensor: torch.Tensor) -> None:
    """Feed name, dtype, shape and the raw bytes of `tensor` (no copy when it is contiguous on the CPU)."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(tensor.view(-1).view(torch.uint8).numpy())


def state_dict_hash(model: nn.Module) -> str:
    """SHA-256 of the model's state dict in sorted key order (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        _update_with_tensor(digest, name, tensor)
    return digest.hexdigest()


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (the calibration token ids of each set), in sorted name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        _update_with_tensor(digest, name, tensor)
    return digest.hexdigest()


@dataclass
class SearchProgress:
    """What a search needs to continue after an interruption, and to check it continues the same search."""

    config: dict[str, Any]  # MultiPrunerConfig.to_dict()
    model_hash: str  # state_dict_hash of the dense model before any change
    calibration_hash: str  # tensors_hash of the calibration sets
    record: PruningRecord  # the steps finished so far

    def save(self, directory: Union[str, os.PathLike]) -> str:
        """Write `multipruner_progress.json` into `directory` atomically and return its path."""
        path = os.path.join(directory, PROGRESS_NAME)
        data = {
            "format": PROGRESS_FORMAT,
            "version": 1,
            "config": self.config,
            "model_hash": self.model_hash,
            "calibration_hash": self.calibration_hash,
            "record": self.record.to_dict(),
        }
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "SearchProgress":
        """Read the progress file of `directory`; `ValueError` if it is missing, corrupted or truncated."""
        path = os.path.join(directory, PROGRESS_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"Cannot resume: {path} does not exist (no search has written progress there).")
        try:
            data = read_json(path)
        except ValueError as error:
            raise ValueError(f"Cannot resume: {error}") from error
        if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT:
            raise ValueError(f"Cannot resume: {path} is not an optimum-multipruner progress file.")
        try:
            record = PruningRecord.from_dict(data["record"])
            return cls(data["config"], data["model_hash"], data["calibration_hash"], record)
        except KeyError as error:
            raise ValueError(f"Cannot resume: {path} lacks the field {error}; it is corrupted.") from error


def has_progress(directory: Union[str, os.PathLike]) -> bool:
    """Whether `directory` holds a progress file."""
    return os.path.isfile(os.path.join(directory, PROGRESS_NAME))
