"""The resume state of a search on disk: the record so far plus fingerprints of its inputs, so an interrupted search
can resume.

`multipruner_progress.json` holds the search configuration, a SHA-256 of the dense model's weights (taken before any
reordering), a SHA-256 of the calibration token ids, and the pruning record up to the last finished step. It is
rewritten atomically after every step, so a crash at any moment leaves either the previous or the new version.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .architectures import ArchitectureAdapter
from .candidates import STAGE_ACTIONS
from .configuration import MultiPrunerConfig, calibration_set, upgrade_config_dict
from .record import PruningRecord
from .utils import atomic_write_text, read_json

PROGRESS_NAME = "multipruner_progress.json"
PROGRESS_FORMAT = "optimum-multipruner-progress"
# Fields that decide where the search keeps its data, never what it chooses: a search may resume with other values
# (e.g. one that ran out of GPU memory resumes with `cache_device="cpu"`).
PLACEMENT_FIELDS = frozenset({"cache_device"})
STOPPING_FIELDS = frozenset({"max_steps"})  # where a search stops, not what it computes: may grow on resume
# Fields added since progress files were first written whose default is not what the search did before they existed:
# a progress file without them resumes with these values (dotted: fields of `fast_search`).
FORMER_VALUES = {"fast_search.screen": None, "fast_search.screen_radius": 0, "fast_search.tie_z": None}
FAST_MODE_PREFIX = "fast_search."  # the fields the exact search does not use
SCREEN_FIELDS = frozenset({"fast_search.screen_radius"})  # unused without a screen


def comparable_fields(config: dict[str, Any]) -> dict[str, Any]:
    """A `MultiPrunerConfig.to_dict()` of any version as one flat dict: the fields of `fast_search` as
    `fast_search.<name>`."""
    flat = dict(upgrade_config_dict(config))
    fast_search = flat.pop("fast_search", None) or {}
    return {**flat, **{f"fast_search.{name}": value for name, value in fast_search.items()}}


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
    record: Optional[PruningRecord] = None  # the steps finished so far
    directory: Optional[Union[str, os.PathLike]] = None  # where `save` writes

    def save(self, record: PruningRecord) -> str:
        """Write `multipruner_progress.json` with `record` into `self.directory` atomically and return its path."""
        self.record = record
        path = os.path.join(self.directory, PROGRESS_NAME)
        data = {
            "format": PROGRESS_FORMAT,
            "version": 1,
            "config": self.config,
            "model_hash": self.model_hash,
            "calibration_hash": self.calibration_hash,
            "record": record.to_dict(),
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
            return cls(data["config"], data["model_hash"], data["calibration_hash"], record, directory)
        except KeyError as error:
            raise ValueError(f"Cannot resume: {path} lacks the field {error}; it is corrupted.") from error


def has_progress(directory: Union[str, os.PathLike]) -> bool:
    """Whether `directory` holds a progress file."""
    return os.path.isfile(os.path.join(directory, PROGRESS_NAME))


def start_progress(model: nn.Module, adapter: ArchitectureAdapter, config, calibration: Mapping[str, torch.Tensor],
                   checkpoint_dir: Optional[Union[str, os.PathLike]],
                   resume_from: Optional[Union[str, os.PathLike]],
                   shared_from: Optional[Union[str, os.PathLike]] = None,
                   ) -> tuple[Optional[SearchProgress], Optional[PruningRecord]]:
    """Check and prepare the progress folder of a search, before any weight changes.

    Returns the progress to write after every step (`None` without a folder) and the record to start from (`None`
    for a new search): the interrupted search's (`resume_from`) or the steps shared with a larger one
    (`shared_from`, see `shared_steps`). Fingerprints are taken from the dense weights, before any reordering.
    """
    if resume_from is not None and shared_from is not None:
        raise ValueError("Give `resume_from` (continue a search) or `shared_from` (start from a larger one), not both.")
    source = resume_from if resume_from is not None else shared_from
    saved = SearchProgress.load(source) if source is not None else None
    directory = resume_from if checkpoint_dir is None else checkpoint_dir
    if directory is None and saved is None:
        return None, None
    if directory is not None:
        prepare_checkpoint_dir(directory, resume_from)
    current = SearchProgress(config.to_dict(), state_dict_hash(model), tensors_hash(calibration), directory=directory)
    writer = current if directory is not None else None
    if saved is None:
        return writer, None
    if shared_from is not None:
        record = shared_steps(saved, current, config)
    else:
        check_resumable(saved, current)
        record = saved.record
        if config.max_steps is not None and len(record.steps) > config.max_steps:
            raise ValueError(f"Cannot resume: the search in {source} already made {len(record.steps)} steps, more "
                             f"than max_steps={config.max_steps}. Resume with a max_steps of at least "
                             f"{len(record.steps)}, or none.")
    check_recorded_steps(record, model.config, adapter, source)
    return writer, record


def shared_steps(saved: SearchProgress, current: SearchProgress, config: MultiPrunerConfig) -> PruningRecord:
    """The first steps of `saved`, a search of the same configuration but a larger `target_ratio`, that the search of
    `config` would take: its first stage up to `config`'s target for that stage.

    A greedy search's choices in its first stage depend on the model, the calibration data and the configuration, not
    on where the stage stops; so a smaller target repeats the larger search's steps exactly until it reaches its own
    first-stage target (for BlockPruner: the whole search). The returned record holds those steps, `config` and no
    search statistics (their work was done by the larger search; `shared_steps` counts them).
    """
    larger = saved.config.get("target_ratio")
    if not isinstance(larger, (int, float)) or larger < config.target_ratio:
        raise ValueError(f"Cannot share steps: the search in {saved.directory} has target_ratio {larger}, not at least "
                         f"this search's {config.target_ratio}.")
    same_target = SearchProgress({**current.config, "target_ratio": larger}, current.model_hash,
                                 current.calibration_hash)
    try:
        check_resumable(saved, same_target)
    except ValueError as error:
        raise ValueError(f"Cannot share the steps of {saved.directory}: {error}") from error
    stage = config.active_stages[0]
    shared = 0
    for step in saved.record.steps[: config.max_steps]:
        if step.stage != stage:
            break
        shared += 1
        if step.ratio >= config.stage_targets[stage]:
            break
    record = PruningRecord.from_dict(saved.record.to_dict())
    record.steps, record.config, record.search_stats = record.steps[:shared], copy.deepcopy(config), {}
    first_set = calibration_set(stage)  # later sets were first used on another model
    record.start_perplexity = {k: v for k, v in record.start_perplexity.items() if k == first_set}
    record.target_reached, record.shared_steps = True, shared
    return record


def prepare_checkpoint_dir(directory: Union[str, os.PathLike],
                            resume_from: Optional[Union[str, os.PathLike]]) -> None:
    """Create the progress folder; refuse a file, or a folder holding another search's progress."""
    if os.path.isfile(directory):
        raise FileExistsError(f"The checkpoint path {directory} is a file; give a directory path.")
    resuming_here = resume_from is not None and os.path.realpath(directory) == os.path.realpath(resume_from)
    if has_progress(directory) and not resuming_here:
        raise FileExistsError(
            f"{directory} already holds the progress of a search. Pass `resume_from={str(directory)!r}` to continue "
            "it, or choose another checkpoint directory."
        )
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"Cannot write search progress to {directory}: it is not writable.")


def check_resumable(saved: SearchProgress, current: SearchProgress) -> None:
    """`ValueError` unless the saved progress belongs to this configuration, dense model and calibration data.

    A configuration field added after the progress was written counts with the value that gives the behaviour of the
    version that wrote it: its default (e.g. `search_mode="exact"`, `importance_metric="ppl"`) or its `FORMER_VALUES`
    entry (`fast_search.screen=None`); the flat `fast_search_<name>` keys of older files are read as `fast_search`'s.
    The fast mode's settings do not matter between two exact searches, nor the screen's between two searches without
    one. `max_steps` may differ: it says where a search stops, not what it
    chooses (a resume checks it allows the steps already made).
    """
    config = comparable_fields(current.config)
    saved_config = {**comparable_fields(MultiPrunerConfig().to_dict()), **FORMER_VALUES,
                    **comparable_fields(saved.config)}
    ignored = set(PLACEMENT_FIELDS | STOPPING_FIELDS)
    if config.get("search_mode") == saved_config.get("search_mode") == "exact":
        ignored |= {k for k in set(config) | set(saved_config) if k.startswith(FAST_MODE_PREFIX)}
    if config.get("fast_search.screen") is None and saved_config.get("fast_search.screen") is None:
        ignored |= SCREEN_FIELDS
    changed = sorted(k for k in (set(config) | set(saved_config)) - ignored if config.get(k) != saved_config.get(k))
    if changed:
        raise ValueError(
            f"Cannot resume: the configuration differs from the interrupted search's in {changed}. Resume with the "
            "same MultiPrunerConfig, or start a new search in another checkpoint directory."
        )
    if saved.model_hash != current.model_hash:
        raise ValueError(
            "Cannot resume: the model's weights differ from those the interrupted search started from (weight hash "
            "mismatch). Resume with the same dense model."
        )
    if saved.calibration_hash != current.calibration_hash:
        raise ValueError(
            "Cannot resume: the calibration token ids differ from the interrupted search's (another data file, "
            "tokenizer or data content). Resume with the same data and tokenizer."
        )


def check_recorded_steps(record: PruningRecord, model_config, adapter: ArchitectureAdapter,
                          resume_from: Union[str, os.PathLike]) -> None:
    """`ValueError` before any weight changes if the saved steps cannot be re-applied to this model."""
    actions = {action for stage_actions in STAGE_ACTIONS.values() for action in stage_actions}
    for step in record.steps:
        if step.action not in actions or not 0 <= step.layer < model_config.num_hidden_layers:
            raise ValueError(f"Cannot resume: step {step.step} of {resume_from} ({step.action} of layer {step.layer}) "
                             "does not fit this model; the progress file is corrupted.")
    record.structure.validate(model_config, adapter)
