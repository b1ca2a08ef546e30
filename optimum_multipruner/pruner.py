"""`MultiPruner`: the training-free pruner. It searches (MultiPruner or BlockPruner) or applies a saved record, and
leaves a physically smaller model of a registered pruned class that `save_pretrained`/`from_pretrained` round-trip."""

from __future__ import annotations

import os
import random
from typing import Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ArchitectureAdapter, get_adapter
from .candidates import SHRINK_MLP, STAGE_ACTIONS, Candidate, PruningUnits, apply_candidate, candidates_for, trial
from .checkpointing import SearchProgress, has_progress, state_dict_hash, tensors_hash
from .configuration import MultiPrunerConfig
from .data import build_sequences, load_text_rows, sample_rows
from .evaluator import CandidateEvaluator
from .modeling import to_pruned_model
from .perplexity import reference_ignore_index
from .record import PruningRecord, PruningStep
from .surgery import (
    PrunedStructure,
    apply_structure,
    count_parameters,
    dense_parameter_count,
    read_structure,
    reorder_by_weight_magnitude,
)
from .utils import atomic_directory, get_logger

logger = get_logger(__name__)


class MultiPruner:
    """Training-free structured pruner for a Hugging Face causal LM.

    ```python
    pruner = MultiPruner(model, tokenizer)
    pruned = pruner.prune(MultiPrunerConfig(target_ratio=0.2))   # the same model object, physically smaller
    pruner.save_pretrained("out")                                # model, tokenizer and pruning record
    ```
    """

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.adapter: ArchitectureAdapter = get_adapter(model)
        _check_model(model)
        self.model = model
        self.tokenizer = tokenizer
        self.record: Optional[PruningRecord] = None

    # ------------------------------------------------------------------ search
    def prune(
        self,
        config: MultiPrunerConfig,
        progress: bool = True,
        checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
        resume_from: Optional[Union[str, os.PathLike]] = None,
    ) -> nn.Module:
        """Run the greedy search of `config` and return the (same, now pruned) model. The steps are in `self.record`.

        Args:
            config: the search settings.
            progress: show progress bars.
            checkpoint_dir: a folder (created if missing) where the search writes `multipruner_progress.json` after
                every step, atomically. It must not hold the progress of another search already.
            resume_from: the `checkpoint_dir` of an interrupted search. The model must be the same dense model, and
                `config` and the calibration data the same (all checked; `ValueError` otherwise). The finished steps
                are re-applied and the search goes on, writing its progress there (or to `checkpoint_dir` if given),
                to exactly the result an uninterrupted search reaches. The search statistics of the stage that was
                interrupted count only the work done after resuming.
        """
        if not isinstance(config, MultiPrunerConfig):
            raise TypeError(f"`config` must be a MultiPrunerConfig, got {type(config).__name__}.")
        if self.tokenizer is None:
            raise ValueError("Pruning needs the model's tokenizer to build the calibration text: MultiPruner(model, tokenizer).")
        model, adapter = self.model, self.adapter
        _check_dense_floating_model(model, adapter)
        layout = adapter.attention_layout(model.config)
        units = self._units(config)
        calibration = self._calibration_sequences(config)  # every input check happens before any weight changes
        saved = SearchProgress.load(resume_from) if resume_from is not None else None
        checkpoint_dir = resume_from if checkpoint_dir is None else checkpoint_dir
        fingerprints = None
        if checkpoint_dir is not None:
            _prepare_checkpoint_dir(checkpoint_dir, resume_from)
            fingerprints = (config.to_dict(), state_dict_hash(model), tensors_hash(calibration))  # dense weights
            if saved is not None:
                _check_resumable(saved, *fingerprints)
                _check_recorded_steps(saved.record, model.config, adapter, resume_from)
        dense_parameters = dense_parameter_count(model.config, adapter)
        model.eval()

        reorder = config.weight_reorder and bool(set(config.active_stages) & {"mlp", "attention"})
        if reorder:
            reorder_by_weight_magnitude(model, adapter)
        layers = adapter.decoder_layers(model)
        if saved is None:
            record = PruningRecord(
                model_type=adapter.model_type,
                num_hidden_layers=model.config.num_hidden_layers,
                dense_parameters=dense_parameters,
                structure=read_structure(model, adapter),
                weight_reorder=reorder,
                config=config.to_dict(),
            )
        else:
            record = saved.record
            for step in record.steps:
                apply_candidate(layers[step.layer], Candidate(step.action, step.layer), adapter, layout, units)
            if read_structure(model, adapter) != record.structure:
                raise ValueError(f"Cannot resume: re-applying the steps of {resume_from} does not give the structure "
                                 "it recorded; the progress file is corrupted.")
        self.record = record
        checkpoint = SearchProgress(*fingerprints, record) if fingerprints is not None else None

        def save_progress() -> None:
            if checkpoint is not None:
                record.structure = read_structure(model, adapter)
                checkpoint.save(checkpoint_dir)

        save_progress()
        ignore_index = reference_ignore_index(self.tokenizer)
        ratio = 1 - count_parameters(model) / dense_parameters
        evaluator, evaluator_set = None, None
        for stage, target in config.stage_targets.items():
            if stage not in config.active_stages or ratio >= target:
                continue
            calibration_set = "block" if stage == "block" else "width"
            if calibration_set != evaluator_set:
                evaluator = None  # free the previous set's cached hidden states first
                evaluator = CandidateEvaluator(
                    model, adapter, calibration[calibration_set], config.batch_size, ignore_index,
                    config.accelerated_search, progress,
                )
                evaluator_set = calibration_set
                record.start_perplexity.setdefault(calibration_set, evaluator.base_perplexity)  # kept on resume
            else:
                evaluator.stats.reset_counters()  # per-stage statistics
            bar = tqdm(total=round(target * 100, 2), desc=f"{stage} stage (% removed)", disable=not progress)
            while ratio < target:
                if config.max_steps is not None and len(record.steps) >= config.max_steps:
                    record.target_reached = False
                    break
                candidates = candidates_for(stage, layers, adapter, layout, units)
                if not candidates:
                    logger.warning("Stage %s ran out of candidates at ratio %.4f (target %.4f).", stage, ratio, target)
                    record.target_reached = False
                    break
                best, total = evaluator.select(
                    candidates, lambda c: trial(layers[c.layer], c, adapter, layout, units), f"step {len(record.steps) + 1}"
                )
                apply_candidate(layers[best.layer], best, adapter, layout, units)
                evaluator.committed(best, total)
                ratio = 1 - count_parameters(model) / dense_parameters
                step = PruningStep(
                    step=len(record.steps) + 1,
                    stage=stage,
                    action=best.action,
                    layer=best.layer,
                    perplexity=evaluator.to_perplexity(total),
                    ratio=ratio,
                    num_parameters=count_parameters(model),
                    kept=self._kept(layers[best.layer], best),
                )
                record.steps.append(step)
                save_progress()
                logger.info("Step %d: %s -> calibration perplexity %.4f, %.2f%% removed",
                            step.step, best, step.perplexity, 100 * ratio)
                bar.update(min(round(ratio * 100, 2), bar.total) - bar.n)
            bar.close()
            record.search_stats[stage] = evaluator.stats.to_dict()
        record.structure = read_structure(model, adapter)
        save_progress()
        return to_pruned_model(model, adapter, record.structure)

    # ------------------------------------------------------------------ apply a saved result
    def apply(self, record: Union[PruningRecord, str, os.PathLike], weight_reorder: Optional[bool] = None,
              num_blocks: Optional[int] = None) -> nn.Module:
        """Shrink the dense model to a saved record (ours, or an official MultiPruner / BlockPruner JSON).

        `weight_reorder` overrides the record's flag (the official MultiPruner format does not store it).
        """
        if not isinstance(record, PruningRecord):
            record = PruningRecord.load(record, self.model.config, weight_reorder is not False, num_blocks)
        if get_adapter(record.model_type) is not self.adapter or record.num_hidden_layers != self.model.config.num_hidden_layers:
            raise ValueError(
                f"The record is for a {record.num_hidden_layers}-layer {record.model_type} model, but this is a "
                f"{self.model.config.num_hidden_layers}-layer {self.adapter.model_type} model."
            )
        record.structure.validate(self.model.config, self.adapter)
        if read_structure(self.model, self.adapter) != PrunedStructure.dense(self.model.config, self.adapter):
            raise ValueError("`apply` needs the dense model; this one is already pruned.")
        reorder = record.weight_reorder if weight_reorder is None else weight_reorder
        if reorder:
            reorder_by_weight_magnitude(self.model, self.adapter)
        apply_structure(self.model, self.adapter, record.structure)
        self.record = record
        return to_pruned_model(self.model, self.adapter, record.structure)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], overwrite: bool = False) -> None:
        """Save the pruned model (safetensors), the tokenizer and the pruning record, atomically."""
        with atomic_directory(save_directory, overwrite) as tmp:
            self.model.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            if self.record is not None:
                self.record.save(tmp)

    # ------------------------------------------------------------------ helpers
    def _units(self, config: MultiPrunerConfig) -> PruningUnits:
        """Group sizes checked against the model (before anything changes)."""
        model_config = self.model.config
        layout = self.adapter.attention_layout(model_config)
        attention_group = config.attn_channel_group_size or layout.group_width
        if "attention" in config.active_stages:
            if attention_group % layout.group_width:
                raise ValueError(
                    f"`attn_channel_group_size` ({attention_group}) must be a multiple of one whole KV group: "
                    f"{layout.heads_per_group} query heads x head_dim {layout.head_dim} = {layout.group_width} channels."
                )
            if attention_group >= layout.num_heads * layout.head_dim:
                raise ValueError(
                    f"`attn_channel_group_size` ({attention_group}) must be smaller than the attention width "
                    f"({layout.num_heads * layout.head_dim}); attention pruning never goes below one KV group."
                )
        if "mlp" in config.active_stages and config.mlp_channel_group_size >= model_config.intermediate_size:
            raise ValueError(
                f"`mlp_channel_group_size` ({config.mlp_channel_group_size}) must be smaller than the MLP width "
                f"({model_config.intermediate_size})."
            )
        return PruningUnits(config.mlp_channel_group_size, attention_group, config.block_types)

    def _calibration_sequences(self, config: MultiPrunerConfig) -> dict[str, torch.Tensor]:
        """The reference's two row sets, drawn from one seeded stream: width rows first, then block rows."""
        rows = load_text_rows(config.calibration_dataset, "calibration", config.calibration_text_column)
        rng = random.Random(config.seed)
        sets = {}
        if {"mlp", "attention"} & set(config.active_stages):
            picked = sample_rows(rows, config.num_calibration_samples_width, rng, config.calibration_dataset)
            sets["width"] = build_sequences(self.tokenizer, picked, config.sequence_length, "The width calibration text")
        if "block" in config.active_stages:
            picked = sample_rows(rows, config.num_calibration_samples_block, rng, config.calibration_dataset)
            sets["block"] = build_sequences(self.tokenizer, picked, config.sequence_length, "The block calibration text")
        vocab = self.model.get_input_embeddings().num_embeddings
        largest = max(int(sequences.max()) for sequences in sets.values())
        if largest >= vocab:
            raise ValueError(
                f"The tokenizer produced token id {largest} but the model's embedding has only {vocab} rows: the "
                "tokenizer does not belong to this model."
            )
        return sets

    def _kept(self, layer: nn.Module, candidate: Candidate) -> int:
        """What the candidate's sub-block keeps after the step: 0 if removed, else its MLP width or KV heads."""
        if candidate.action in STAGE_ACTIONS["block"]:
            return 0
        if candidate.action == SHRINK_MLP:
            return self.adapter.mlp_width(layer.mlp)
        return self.adapter.kv_heads(layer.self_attn, self.adapter.attention_layout(self.model.config))


def _check_model(model: nn.Module) -> None:
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type == "meta":
        raise ValueError("The model's weights are on the meta device (not loaded); load it with real weights first.")


def _check_dense_floating_model(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """A search starts from the dense original, with floating-point weights on one device."""
    structure, dense = read_structure(model, adapter), PrunedStructure.dense(model.config, adapter)
    if structure != dense:
        kv_heads, widths = structure.num_key_value_heads, structure.intermediate_size
        i = next(i for i in range(dense.num_layers)
                 if (kv_heads[i], widths[i]) != (dense.num_key_value_heads[i], dense.intermediate_size[i]))
        raise ValueError(
            f"The model is already pruned (layer {i} keeps {kv_heads[i]} KV heads and MLP width {widths[i]}); a "
            "search must start from the dense original. Prune the dense model with the larger total `target_ratio` "
            "(ratios count from the dense size), or `apply` a saved record."
        )
    dtypes = {p.dtype for p in model.parameters()}
    if not all(dtype.is_floating_point for dtype in dtypes):
        raise ValueError(
            f"The model's weights have dtype(s) {sorted(map(str, dtypes))}; pruning needs floating-point weights "
            "(float32, bfloat16, float16). Load the model unquantized."
        )
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        raise ValueError(f"The model is spread over several devices ({sorted(map(str, devices))}); load it on one.")


def _prepare_checkpoint_dir(directory: Union[str, os.PathLike],
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


def _check_resumable(saved: SearchProgress, config: dict, model_hash: str, calibration_hash: str) -> None:
    """`ValueError` unless the saved progress belongs to this configuration, dense model and calibration data."""
    if saved.config != config:
        changed = sorted(k for k in set(config) | set(saved.config) if config.get(k) != saved.config.get(k))
        raise ValueError(
            f"Cannot resume: the configuration differs from the interrupted search's in {changed}. Resume with the "
            "same MultiPrunerConfig, or start a new search in another checkpoint directory."
        )
    if saved.model_hash != model_hash:
        raise ValueError(
            "Cannot resume: the model's weights differ from those the interrupted search started from (weight hash "
            "mismatch). Resume with the same dense model."
        )
    if saved.calibration_hash != calibration_hash:
        raise ValueError(
            "Cannot resume: the calibration token ids differ from the interrupted search's (another data file, "
            "tokenizer or data content). Resume with the same data and tokenizer."
        )


def _check_recorded_steps(record: PruningRecord, model_config, adapter: ArchitectureAdapter,
                          resume_from: Union[str, os.PathLike]) -> None:
    """`ValueError` before any weight changes if the saved steps cannot be re-applied to this model."""
    actions = {action for stage_actions in STAGE_ACTIONS.values() for action in stage_actions}
    for step in record.steps:
        if step.action not in actions or not 0 <= step.layer < model_config.num_hidden_layers:
            raise ValueError(f"Cannot resume: step {step.step} of {resume_from} ({step.action} of layer {step.layer}) "
                             "does not fit this model; the progress file is corrupted.")
    record.structure.validate(model_config, adapter)
