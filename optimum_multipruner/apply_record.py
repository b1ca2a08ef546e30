"""`apply`: shrink a dense model to a saved pruning record (ours, or an official MultiPruner / BlockPruner JSON), in
place, with the weight order it pruned along and, optionally, the compensation of its search."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import torch
from torch import nn

from .architectures import ArchitectureAdapter, get_adapter
from .compensation import ATTENTION, MLP, DenseBranches, compensate_record
from .configuration import CompensationConfig, MultiPrunerConfig, compensation_from_arguments
from .data import build_calibration_sets
from .modeling import to_pruned_model
from .record import PruningRecord
from .structure import PrunedStructure
from .surgery import (
    apply_structure,
    layers_keeping_other_units,
    read_structure,
    reorder_by_weight_magnitude,
    weight_magnitude_orders,
)
from .utils import get_logger

logger = get_logger(__name__)


def apply(model: nn.Module, record: Union[PruningRecord, str, os.PathLike], tokenizer=None,
          weight_reorder: Optional[bool] = None, num_blocks: Optional[int] = None,
          compensation: Optional[CompensationConfig] = None, compensation_alpha: Optional[float] = None, *,
          compensate: Optional[bool] = None) -> PruningRecord:
    """Shrink the dense `model` to a saved record, in place (it ends of its registered pruned class), and return the
    record applied.

    `weight_reorder` overrides the record's flag (the official MultiPruner format does not store it). A record of
    a reordering search holds the weight-magnitude order it pruned along, which is applied as it is, so the same
    channels are kept on any device and in any dtype; older and imported records sort this model's weights again.
    `compensation` refits the kept weights as `prune(compensation=...)` does, on the calibration text of the record's
    `config` (it needs the `tokenizer`); the weights of a compensated search are rebuilt with it and the alpha its
    record's `compensation` names. `compensate` / `compensation_alpha` (or a bool as `compensation`) are the
    deprecated spelling of `compensation` (`FutureWarning`).
    """
    compensation = compensation_from_arguments(compensation, compensate, compensation_alpha)
    adapter = get_adapter(model)
    if not isinstance(record, PruningRecord):
        record = PruningRecord.load(record, model.config, weight_reorder is not False, num_blocks)
    if get_adapter(record.model_type) is not adapter or record.num_hidden_layers != model.config.num_hidden_layers:
        raise ValueError(
            f"The record is for a {record.num_hidden_layers}-layer {record.model_type} model, but this is a "
            f"{model.config.num_hidden_layers}-layer {adapter.model_type} model."
        )
    record.structure.validate(model.config, adapter)
    dense = read_structure(model, adapter)
    if dense != PrunedStructure.dense(model.config, adapter):
        raise ValueError("`apply` needs the dense model; this one is already pruned.")
    calibration = _compensation_text(model, tokenizer, record) if compensation is not None else None
    if compensation is None and record.compensation is not None:
        logger.warning("The record's model was compensated after pruning; pass `compensation=CompensationConfig(alpha="
                       "%s)` to rebuild its weights. Applying the structure alone.", record.compensation.get("alpha"))
        record = dataclasses.replace(record, compensation=None)
    reorder = record.weight_reorder if weight_reorder is None else weight_reorder
    if reorder:
        recorded = record.layer_orders(model.config, adapter)  # checked before any change
        own = weight_magnitude_orders(model, adapter)
        differing = [] if recorded is None else layers_keeping_other_units(own, recorded, record.structure)
        if differing:
            logger.warning(
                "By its own weight magnitudes this model would keep other channels or KV groups in layers %s than "
                "the record's order, which is applied: these are not exactly the weights the search ran on "
                "(another checkpoint, or values rounded by the dtype of the search).", differing)
        reorder_by_weight_magnitude(model, adapter, own if recorded is None else recorded)
    dense_branches = _dense_branches_narrowed(model, adapter, dense, record.structure) if compensation is not None else None
    apply_structure(model, adapter, record.structure)
    if compensation is not None:
        record = compensate_record(record, model, dense_branches, calibration, compensation, progress=False)
    to_pruned_model(model, adapter, record.structure)
    return record


def _compensation_text(model: nn.Module, tokenizer, record: PruningRecord) -> torch.Tensor:
    """The calibration sequences of `record`'s search (both sets, `[n, seq_len]`), checked before any change."""
    if tokenizer is None:
        raise ValueError("Compensation needs the model's tokenizer for its calibration text: "
                         "MultiPruner(model, tokenizer).")
    if record.config is None:
        raise ValueError("This record holds no search settings (an imported record), so it names no calibration "
                         "text to compensate on.")
    vocab_size = model.get_input_embeddings().num_embeddings
    sets = build_calibration_sets(record.config, tokenizer, vocab_size)
    return torch.cat(list(sets.values()))


def _dense_branches_narrowed(model: nn.Module, adapter: ArchitectureAdapter, dense: PrunedStructure,
                             target: PrunedStructure) -> DenseBranches:
    """Copies of every sub-block that shrinking the `dense` model to `target` narrows (and keeps)."""
    branches = DenseBranches(model, adapter)
    widths = zip(dense.num_key_value_heads, target.num_key_value_heads, dense.intermediate_size,
                 target.intermediate_size)
    for i, (kv, kept_kv, width, kept_width) in enumerate(widths):
        if 0 < kept_kv < kv:
            branches.keep(i, ATTENTION)
        if 0 < kept_width < width:
            branches.keep(i, MLP)
    return branches
