"""`prune`: the greedy search of a MultiPruner or BlockPruner configuration on a dense model, in place, step by step
(resumable, shareable between ratio sweeps, spread over processes), and its record."""

from __future__ import annotations

import copy
import json
import os
from functools import cached_property
from typing import Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .architectures import ArchitectureAdapter, AttentionLayout, get_adapter
from .candidates import (
    SHRINK_ATTENTION,
    SHRINK_MLP,
    STAGE_ACTIONS,
    Candidate,
    PruningGranularity,
    apply_candidate,
    candidates_for,
    trial,
)
from .compensation import ATTENTION, MLP, DenseBranches, compensate_record
from .configuration import (
    ATTENTION_STAGE,
    BLOCK_STAGE,
    MLP_STAGE,
    CompensationConfig,
    MultiPrunerConfig,
    calibration_set,
    compensation_from_arguments,
)
from .data import build_calibration_sets
from .devices import check_device_available, check_placement, execution_device
from .memory import check_search_memory
from .modeling import to_pruned_model
from .nll import reference_ignore_index
from .resume_state import SearchProgress, start_progress, tensors_hash
from .record import PruningRecord, PruningStep, encode_weight_order
from .scoring import CandidateSelector, ModelEvaluator, original_final_hidden_states
from .structure import PrunedStructure
from .surgery import (
    count_parameters,
    dense_parameter_count,
    read_structure,
    reorder_by_weight_magnitude,
)
from .utils import get_logger

logger = get_logger(__name__)


def prune(
    model: nn.Module,
    tokenizer,
    config: MultiPrunerConfig,
    progress: bool = True,
    checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
    resume_from: Optional[Union[str, os.PathLike]] = None,
    shared_from: Optional[Union[str, os.PathLike]] = None,
    compensation: Optional[CompensationConfig] = None,
    evaluator_class: type[ModelEvaluator] = ModelEvaluator,
    *,
    compensate: Optional[bool] = None,
    compensation_alpha: Optional[float] = None,
) -> PruningRecord:
    """Run the greedy search of `config` on `model`, in place, and return its record: `model` ends physically
    smaller, of its registered pruned class.

    Args:
        model: the dense model (a supported family, floating-point weights).
        tokenizer: its tokenizer, which builds the calibration text.
        config: the search settings.
        progress: show progress bars.
        checkpoint_dir: a folder (created if missing) where the search writes `multipruner_progress.json` after
            every step, atomically: the record so far, with each stage's search statistics so far. It must not
            hold the progress of another search already.
        resume_from: the `checkpoint_dir` of an interrupted search. The model must be the same dense model, and
            `config` and the calibration data the same (all checked; `ValueError` otherwise). The finished steps
            are re-applied and the search goes on, writing its progress there (or to `checkpoint_dir` if given),
            to exactly the result an uninterrupted search reaches. The search statistics of the stage that was
            interrupted count its work up to the last step saved, then the work after resuming. A larger
            `max_steps` (or none) extends a search that `max_steps` stopped.
        shared_from: the `checkpoint_dir` of a search (finished or not) of the same configuration, model and data
            with a larger `target_ratio`. This search starts from the steps the two share, its whole first stage
            (for BlockPruner: every step), which a greedy search repeats exactly whatever its target, and goes on
            by itself: the result equals a search from scratch. Ratio sweeps pay for their first stage once.
        compensation: after the search, refit the kept weights of every narrowed attention and MLP output
            projection toward the dense model's outputs on the calibration text (both sets), layer by layer
            (`compensation.py`) with these settings; the record's `compensation` says so. Holds a copy of each
            narrowed sub-block's dense weights until the end. `None` (default): no refit.
        evaluator_class: what scores the candidates (a [`ModelEvaluator`]); a subclass may observe its rounds.
        compensate, compensation_alpha: deprecated spelling of `compensation` (`FutureWarning`).

    Under `torchrun` or `accelerate launch`, every process runs `prune` on its own copy of the model (see
    `distributed.py`): the candidates of each step are shared out between the processes and the record is the one
    a single process makes. Only rank 0 shows progress, logs and writes the progress file; `resume_from` must be
    readable by every process.
    """
    compensation = compensation_from_arguments(compensation, compensate, compensation_alpha)
    return GreedySearch(model, tokenizer, evaluator_class).run(
        config, progress, checkpoint_dir, resume_from, shared_from, compensation)


class GreedySearch:
    """The state of one `prune` call: the model searched, its adapter, the record so far and, with `compensation`, the
    dense copies of the sub-blocks the search narrows."""

    def __init__(self, model: nn.Module, tokenizer, evaluator_class: type[ModelEvaluator] = ModelEvaluator) -> None:
        self.adapter: ArchitectureAdapter = get_adapter(model)
        self.model = model
        self.tokenizer = tokenizer
        self.evaluator_class = evaluator_class
        self.record: Optional[PruningRecord] = None
        self._dense_branches: Optional[DenseBranches] = None  # while pruning with `compensation`

    def run(self, config: MultiPrunerConfig, progress: bool, checkpoint_dir: Optional[Union[str, os.PathLike]],
            resume_from: Optional[Union[str, os.PathLike]], shared_from: Optional[Union[str, os.PathLike]],
            compensation: Optional[CompensationConfig]) -> PruningRecord:
        """[`prune`]'s outline."""
        distributed.init_distributed(self._device)
        main = distributed.is_main_process()
        progress = progress and main
        # Every input check happens before any weight changes, on every process; one failing stops them all.
        with distributed.fail_together(self._device):
            self._check_can_prune(config)
            granularity = self._granularity(config)
            vocab_size = self.model.get_input_embeddings().num_embeddings
            calibration = build_calibration_sets(config, self.tokenizer, vocab_size)
            check_search_memory(self.model, self.adapter, config, calibration)
            writer, resumed = start_progress(self.model, self.adapter, config, calibration,
                                             checkpoint_dir if main else None, resume_from, shared_from)
        writer = writer if main else None
        self._check_same_search_on_all_ranks(config, calibration)

        self.model.eval()
        reorder = config.weight_reorder and bool(set(config.active_stages) & {MLP_STAGE, ATTENTION_STAGE})
        recorded = resumed.layer_orders(self.model.config, self.adapter) if resumed is not None else None
        orders = reorder_by_weight_magnitude(self.model, self.adapter, recorded) if reorder else None
        references = self._original_final_hidden_states(config, calibration)  # before any step is (re)applied
        self._dense_branches = DenseBranches(self.model, self.adapter) if compensation is not None else None
        if resumed is None:
            self.record = self._new_record(config, reorder)
        else:
            self.record = resumed
            self._replay(resumed, granularity, resume_from or shared_from, check_structure=shared_from is None)
        self.record.weight_order = None if orders is None else encode_weight_order(orders)
        self._refresh_structure()
        self._save_progress(writer)
        self._search(config, calibration, references, granularity, writer, progress)
        self._save_progress(writer)
        if compensation is not None:
            self.record = compensate_record(self.record, self.model, self._dense_branches,
                                            torch.cat(list(calibration.values())), compensation, progress)
            self._dense_branches = None
        to_pruned_model(self.model, self.adapter, self.record.structure)
        return self.record


    def _original_final_hidden_states(self, config: MultiPrunerConfig,
                                      calibration: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The KL objective's reference for each calibration set, taken once on the dense model (else nothing)."""
        if config.importance_metric != "kl":
            return {}
        return {name: original_final_hidden_states(self.model, self.adapter, sequences, config.batch_size,
                                                   config.cache_device)
                for name, sequences in calibration.items()}

    def _search(self, config: MultiPrunerConfig, calibration: dict[str, torch.Tensor],
                references: dict[str, torch.Tensor], granularity: PruningGranularity, writer: Optional[SearchProgress],
                progress: bool) -> None:
        """The stages in order; each removes the best candidate, step by step, until its cumulative target."""
        record, layers = self.record, self.adapter.decoder_layers(self.model)
        record.target_reached = True  # until a step limit or a stage without candidates stops the search
        ignore_index = reference_ignore_index(self.tokenizer, self.model.config, config.is_blockpruner)
        ratio = self._ratio()
        selector, selector_set = None, None
        for stage, target in config.stage_targets.items():
            if stage not in config.active_stages or ratio >= target:
                continue
            if self._max_steps_reached(config):
                record.target_reached = False
                break  # before the stage's calibration forward: it would take no step
            set_name = calibration_set(stage)
            if set_name != selector_set:
                selector = evaluator = None  # free the previous set's cached hidden states first
                evaluator = self.evaluator_class(
                    self.model, self.adapter, calibration[set_name], config.batch_size, ignore_index,
                    config.accelerated_search, cache_device=config.cache_device,
                    importance_metric=config.importance_metric, reference=references.get(set_name),
                    head_chunk_size=config.head_chunk_size,
                )
                fast_search = config.fast_search if config.search_mode == "fast" else None
                selector = CandidateSelector(evaluator, fast_search, progress)
                selector.restore_damage([s for s in record.steps if calibration_set(s.stage) == set_name])
                selector_set = set_name
                record.start_perplexity.setdefault(set_name, selector.base_perplexity)  # kept on resume
            selector.start_stage(record.search_stats.get(stage))  # a resumed stage counts on from its saved work
            bar = tqdm(total=round(target * 100, 2), desc=f"{stage} stage (% removed)", disable=not progress)
            while ratio < target:
                if self._max_steps_reached(config):
                    record.target_reached = False
                    break
                candidates = candidates_for(stage, layers, self.adapter, self._layout, granularity)
                if not candidates:
                    if distributed.is_main_process():
                        logger.warning("Stage %s ran out of candidates at ratio %.4f (target %.4f).", stage, ratio,
                                       target)
                    record.target_reached = False
                    break
                step = self._step(stage, candidates, selector, granularity, config.importance_metric)
                ratio = step.ratio
                record.search_stats[stage] = selector.stats.summed_over_ranks(self._device).to_dict()  # so far
                self._save_progress(writer)
                bar.update(min(round(ratio * 100, 2), bar.total) - bar.n)
            bar.close()
            record.search_stats[stage] = selector.stats.summed_over_ranks(self._device).to_dict()

    def _step(self, stage: str, candidates: list[Candidate], selector: CandidateSelector,
              granularity: PruningGranularity, importance_metric: str) -> PruningStep:
        """Score the candidates, apply the best one for good and record it."""
        layers, adapter, layout = self.adapter.decoder_layers(self.model), self.adapter, self._layout

        def apply_for_good(candidate: Candidate) -> None:
            self._keep_dense_branch(candidate)
            apply_candidate(layers[candidate.layer], candidate, adapter, layout, granularity)

        best, total = selector.step(
            candidates,
            trial=lambda c: trial(layers[c.layer], c, adapter, layout, granularity),
            apply=apply_for_good,
            description=f"step {len(self.record.steps) + 1}",
        )
        step = PruningStep(
            step=len(self.record.steps) + 1,
            stage=stage,
            action=best.action,
            layer=best.layer,
            perplexity=selector.base_perplexity,  # calibration perplexity, whatever the objective
            ratio=self._ratio(),
            num_parameters=count_parameters(self.model),
            kept=self._kept(layers[best.layer], best),
            candidate_damage=selector.step_damage,
        )
        self.record.steps.append(step)
        self._refresh_structure()
        if distributed.is_main_process():
            kl = f", mean KL {total / selector.num_sequences:.5f}" if importance_metric == "kl" else ""
            logger.info("Step %d: %s -> calibration perplexity %.4f%s, %.2f%% removed",
                        step.step, best, step.perplexity, kl, 100 * step.ratio)
        return step

    def _max_steps_reached(self, config: MultiPrunerConfig) -> bool:
        """Whether `config.max_steps` stops the search now."""
        return config.max_steps is not None and len(self.record.steps) >= config.max_steps

    def _check_can_prune(self, config: MultiPrunerConfig) -> None:
        if not isinstance(config, MultiPrunerConfig):
            raise TypeError(f"`config` must be a MultiPrunerConfig, got {type(config).__name__}.")
        if self.tokenizer is None:
            raise ValueError("Pruning needs the model's tokenizer to build the calibration text: MultiPruner(model, tokenizer).")
        _check_dense_floating_model(self.model, self.adapter)
        if config.cache_device is not None:
            check_device_available(config.cache_device, "`cache_device`")
        if BLOCK_STAGE in config.active_stages and "attention" in config.block_types:
            blocker = self.adapter.attention_removal_blocker(self.model.config)
            if blocker is not None:
                raise ValueError(
                    f"This search may remove attention blocks, but {blocker}. Search with `block_types=('mlp',)` "
                    "(CLI: --block-types mlp) or without the block stage."
                )

    def _new_record(self, config: MultiPrunerConfig, reorder: bool) -> PruningRecord:
        return PruningRecord(
            model_type=self.adapter.model_type,
            num_hidden_layers=self.model.config.num_hidden_layers,
            dense_parameters=self._dense_parameters,
            structure=read_structure(self.model, self.adapter),
            weight_reorder=reorder,
            config=copy.deepcopy(config),  # the settings searched with, whatever the caller does to `config` later
        )

    def _replay(self, record: PruningRecord, granularity: PruningGranularity, source: Union[str, os.PathLike],
                check_structure: bool = True) -> None:
        """Re-apply the finished steps of an interrupted search (checked against its structure) or shared steps."""
        layers = self.adapter.decoder_layers(self.model)
        for step in record.steps:
            candidate = Candidate(step.action, step.layer)
            self._keep_dense_branch(candidate)
            apply_candidate(layers[step.layer], candidate, self.adapter, self._layout, granularity)
        if check_structure and read_structure(self.model, self.adapter) != record.structure:
            raise ValueError(f"Cannot resume: re-applying the steps of {source} does not give the structure "
                             "it recorded; the progress file is corrupted.")

    def _refresh_structure(self) -> None:
        """Bring `record.structure` up to date with the model: the one place it is set during a search."""
        self.record.structure = read_structure(self.model, self.adapter)

    def _save_progress(self, writer: Optional[SearchProgress]) -> None:
        """Write the record so far, when the search keeps progress on disk."""
        if writer is not None:
            writer.save(self.record)

    def _check_same_search_on_all_ranks(self, config: MultiPrunerConfig, calibration: dict[str, torch.Tensor]) -> None:
        """`ValueError` on every process of a distributed search unless all search the same thing."""
        if distributed.world_size() == 1:
            return
        for what, fingerprint in (
            ("configurations", json.dumps(config.to_dict(), sort_keys=True)),
            ("calibration token ids", tensors_hash(calibration)),
            ("model weights (or dtypes)", distributed.weights_fingerprint(self.model)),
        ):
            distributed.check_same_on_all_ranks(fingerprint, what, self._device)

    @property
    def _device(self) -> torch.device:
        """Where the model takes its inputs (the device of this process's collectives in a distributed search)."""
        return execution_device(self.model.get_input_embeddings())

    def _ratio(self) -> float:
        return 1 - count_parameters(self.model) / self._dense_parameters

    @cached_property
    def _dense_parameters(self) -> int:
        return dense_parameter_count(self.model.config, self.adapter)

    @property
    def _layout(self) -> AttentionLayout:
        return self.adapter.attention_layout(self.model.config)

    def _keep_dense_branch(self, candidate: Candidate) -> None:
        """With `compensation`: copy the sub-block a shrinking step is about to narrow, before its first narrowing."""
        if self._dense_branches is not None and candidate.action in (SHRINK_ATTENTION, SHRINK_MLP):
            self._dense_branches.keep(candidate.layer, ATTENTION if candidate.action == SHRINK_ATTENTION else MLP)

    def _granularity(self, config: MultiPrunerConfig) -> PruningGranularity:
        """Group sizes checked against the model (before anything changes)."""
        model_config = self.model.config
        layout = self.adapter.attention_layout(model_config)
        attention_group = config.attn_channel_group_size or layout.group_width
        if ATTENTION_STAGE in config.active_stages:
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
        if MLP_STAGE in config.active_stages and config.mlp_channel_group_size >= model_config.intermediate_size:
            raise ValueError(
                f"`mlp_channel_group_size` ({config.mlp_channel_group_size}) must be smaller than the MLP width "
                f"({model_config.intermediate_size})."
            )
        return PruningGranularity(config.mlp_channel_group_size, attention_group, config.block_types)

    def _kept(self, layer: nn.Module, candidate: Candidate) -> int:
        """What the candidate's sub-block keeps after the step: 0 if removed, else its MLP width or KV heads."""
        if candidate.action in STAGE_ACTIONS[BLOCK_STAGE]:
            return 0
        if candidate.action == SHRINK_MLP:
            return self.adapter.mlp_width(self.adapter.mlp(layer))
        return self.adapter.kv_heads(self.adapter.attention(layer), self._layout)


def _check_dense_floating_model(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """A search starts from the dense original, with floating-point weights resident on its devices."""
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
    check_placement(model, adapter)
