"""`MultiPruner`: the training-free pruner. It searches (MultiPruner or BlockPruner) or applies a saved record, and
leaves a physically smaller model of a registered pruned class that `save_pretrained`/`from_pretrained` round-trip."""

from __future__ import annotations

import dataclasses
import json
import os
from functools import cached_property
from typing import TYPE_CHECKING, Optional, Union

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
    PruningUnits,
    apply_candidate,
    candidates_for,
    trial,
)
from .compensation import (
    ATTENTION,
    DEFAULT_COMPENSATION_ALPHA,
    MLP,
    DenseBranches,
    check_compensation_alpha,
    compensate,
)
from .configuration import MultiPrunerConfig, calibration_set
from .data import build_calibration_sets
from .devices import check_device_available, check_placement, execution_device
from .modeling import check_finite_weights, to_pruned_model
from .memory import check_search_memory
from .model_card import write_model_card
from .nll import reference_ignore_index
from .progress import SearchProgress, start_progress, tensors_hash
from .record import RECORD_NAME, PruningRecord, PruningStep, encode_weight_order
from .scoring import CandidateSelector, ModelEvaluator, original_final_hidden_states
from .structure import PrunedStructure
from .surgery import (
    apply_structure,
    count_parameters,
    dense_parameter_count,
    read_structure,
    reorder_by_weight_magnitude,
    layers_keeping_other_units,
    weight_magnitude_orders,
)
from .utils import atomic_directory, get_logger

if TYPE_CHECKING:
    from .recovery import RecoveryConfig

logger = get_logger(__name__)


class MultiPruner:
    """Training-free structured pruner for a Hugging Face causal LM.

    ```python
    pruner = MultiPruner(model, tokenizer)
    pruned = pruner.prune(MultiPrunerConfig(target_ratio=0.2))   # the same model object, physically smaller
    pruner.save_pretrained("out")                                # model, tokenizer and pruning record
    ```

    The search scores candidates with `evaluator_class` (a [`ModelEvaluator`]); a subclass may observe its rounds.
    """

    evaluator_class: type[ModelEvaluator] = ModelEvaluator

    def __init__(self, model: nn.Module, tokenizer=None) -> None:
        self.adapter: ArchitectureAdapter = get_adapter(model)
        check_placement(model, self.adapter)
        self.model = model
        self.tokenizer = tokenizer
        self.record: Optional[PruningRecord] = None
        self.recovery_config: Optional["RecoveryConfig"] = None
        self._dense_branches: Optional[DenseBranches] = None  # while pruning with `compensate`

    # ------------------------------------------------------------------ search
    def prune(
        self,
        config: MultiPrunerConfig,
        progress: bool = True,
        checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
        resume_from: Optional[Union[str, os.PathLike]] = None,
        shared_from: Optional[Union[str, os.PathLike]] = None,
        compensate: bool = False,
        compensation_alpha: float = DEFAULT_COMPENSATION_ALPHA,
    ) -> nn.Module:
        """Run the greedy search of `config` and return the (same, now pruned) model. The steps are in `self.record`.

        Args:
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
            compensate: after the search, refit the kept weights of every narrowed attention and MLP output
                projection toward the dense model's outputs on the calibration text (both sets), layer by layer
                (`compensation.py`); the record's `compensation` says so. Holds a copy of each narrowed sub-block's
                dense weights until the end.
            compensation_alpha: its ridge strength toward the pruned weights, relative to the mean diagonal of the
                activations' Gram matrix.

        Under `torchrun` or `accelerate launch`, every process runs `prune` on its own copy of the model (see
        `distributed.py`): the candidates of each step are shared out between the processes and the record is the one
        a single process makes. Only rank 0 shows progress, logs and writes the progress file; `resume_from` must be
        readable by every process.
        """
        distributed.init_distributed(self._device)
        main = distributed.is_main_process()
        progress = progress and main
        # Every input check happens before any weight changes, on every process; one failing stops them all.
        with distributed.fail_together(self._device):
            self._check_can_prune(config)
            check_compensation_alpha(compensation_alpha)
            units = self._units(config)
            vocab_size = self.model.get_input_embeddings().num_embeddings
            calibration = build_calibration_sets(config, self.tokenizer, vocab_size)
            check_search_memory(self.model, self.adapter, config, calibration)
            writer, resumed = start_progress(self.model, self.adapter, config, calibration,
                                             checkpoint_dir if main else None, resume_from, shared_from)
        writer = writer if main else None
        self._check_same_search_on_all_ranks(config, calibration)

        self.model.eval()
        reorder = config.weight_reorder and bool(set(config.active_stages) & {"mlp", "attention"})
        recorded = resumed.layer_orders(self.model.config, self.adapter) if resumed is not None else None
        orders = reorder_by_weight_magnitude(self.model, self.adapter, recorded) if reorder else None
        references = self._original_final_hidden_states(config, calibration)  # before any step is (re)applied
        self._dense_branches = DenseBranches(self.model, self.adapter) if compensate else None
        if resumed is None:
            self.record = self._new_record(config, reorder)
        else:
            self.record = resumed
            self._replay(resumed, units, resume_from or shared_from, check_structure=shared_from is None)
        self.record.weight_order = None if orders is None else encode_weight_order(orders)
        self._refresh_structure()
        self._save_progress(writer)
        self._search(config, calibration, references, units, writer, progress)
        self._save_progress(writer)
        if compensate:
            self._compensate(torch.cat(list(calibration.values())), compensation_alpha, progress)
        return to_pruned_model(self.model, self.adapter, self.record.structure)

    def _original_final_hidden_states(self, config: MultiPrunerConfig,
                                      calibration: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The KL objective's reference for each calibration set, taken once on the dense model (else nothing)."""
        if config.importance_metric != "kl":
            return {}
        return {name: original_final_hidden_states(self.model, self.adapter, sequences, config.batch_size,
                                                   config.cache_device)
                for name, sequences in calibration.items()}

    def _search(self, config: MultiPrunerConfig, calibration: dict[str, torch.Tensor],
                references: dict[str, torch.Tensor], units: PruningUnits, writer: Optional[SearchProgress],
                progress: bool) -> None:
        """The stages in order; each removes the best candidate, step by step, until its cumulative target."""
        record, layers = self.record, self.adapter.decoder_layers(self.model)
        record.target_reached = True  # until a step limit or a stage without candidates stops the search
        ignore_index = reference_ignore_index(self.tokenizer, self.model.config, config.is_blockpruner)
        ratio = self._ratio()
        scorer, scorer_set = None, None
        for stage, target in config.stage_targets.items():
            if stage not in config.active_stages or ratio >= target:
                continue
            if self._max_steps_reached(config):
                record.target_reached = False
                break  # before the stage's calibration forward: it would take no step
            set_name = calibration_set(stage)
            if set_name != scorer_set:
                scorer = evaluator = None  # free the previous set's cached hidden states first
                evaluator = self.evaluator_class(
                    self.model, self.adapter, calibration[set_name], config.batch_size, ignore_index,
                    config.accelerated_search, cache_device=config.cache_device,
                    importance_metric=config.importance_metric, reference=references.get(set_name),
                    head_chunk_size=config.head_chunk_size,
                )
                fast_search = config.fast_search if config.search_mode == "fast" else None
                scorer = CandidateSelector(evaluator, fast_search, progress)
                scorer.restore_damage([s for s in record.steps if calibration_set(s.stage) == set_name])
                scorer_set = set_name
                record.start_perplexity.setdefault(set_name, scorer.base_perplexity)  # kept on resume
            scorer.start_stage(record.search_stats.get(stage))  # a resumed stage counts on from its saved work
            bar = tqdm(total=round(target * 100, 2), desc=f"{stage} stage (% removed)", disable=not progress)
            while ratio < target:
                if self._max_steps_reached(config):
                    record.target_reached = False
                    break
                candidates = candidates_for(stage, layers, self.adapter, self._layout, units)
                if not candidates:
                    if distributed.is_main_process():
                        logger.warning("Stage %s ran out of candidates at ratio %.4f (target %.4f).", stage, ratio,
                                       target)
                    record.target_reached = False
                    break
                step = self._step(stage, candidates, scorer, units, config.importance_metric)
                ratio = step.ratio
                record.search_stats[stage] = scorer.stats.summed_over_ranks(self._device).to_dict()  # so far
                self._save_progress(writer)
                bar.update(min(round(ratio * 100, 2), bar.total) - bar.n)
            bar.close()
            record.search_stats[stage] = scorer.stats.summed_over_ranks(self._device).to_dict()

    def _step(self, stage: str, candidates: list[Candidate], scorer: CandidateSelector, units: PruningUnits,
              importance_metric: str) -> PruningStep:
        """Score the candidates, apply the best one for good and record it."""
        layers, adapter, layout = self.adapter.decoder_layers(self.model), self.adapter, self._layout

        def apply_for_good(candidate: Candidate) -> None:
            self._keep_dense_branch(candidate)
            apply_candidate(layers[candidate.layer], candidate, adapter, layout, units)

        best, total = scorer.step(
            candidates,
            trial=lambda c: trial(layers[c.layer], c, adapter, layout, units),
            apply=apply_for_good,
            description=f"step {len(self.record.steps) + 1}",
        )
        step = PruningStep(
            step=len(self.record.steps) + 1,
            stage=stage,
            action=best.action,
            layer=best.layer,
            perplexity=scorer.base_perplexity,  # calibration perplexity, whatever the objective
            ratio=self._ratio(),
            num_parameters=count_parameters(self.model),
            kept=self._kept(layers[best.layer], best),
            candidate_damage=scorer.step_damage,
        )
        self.record.steps.append(step)
        self._refresh_structure()
        if distributed.is_main_process():
            kl = f", mean KL {total / scorer.num_sequences:.5f}" if importance_metric == "kl" else ""
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
        if "block" in config.active_stages and "attention" in config.block_types:
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
            config=config.to_dict(),
        )

    def _replay(self, record: PruningRecord, units: PruningUnits, source: Union[str, os.PathLike],
                check_structure: bool = True) -> None:
        """Re-apply the finished steps of an interrupted search (checked against its structure) or shared steps."""
        layers = self.adapter.decoder_layers(self.model)
        for step in record.steps:
            candidate = Candidate(step.action, step.layer)
            self._keep_dense_branch(candidate)
            apply_candidate(layers[step.layer], candidate, self.adapter, self._layout, units)
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

    # ------------------------------------------------------------------ apply a saved result
    def apply(self, record: Union[PruningRecord, str, os.PathLike], weight_reorder: Optional[bool] = None,
              num_blocks: Optional[int] = None, compensate: bool = False,
              compensation_alpha: float = DEFAULT_COMPENSATION_ALPHA) -> nn.Module:
        """Shrink the dense model to a saved record (ours, or an official MultiPruner / BlockPruner JSON).

        `weight_reorder` overrides the record's flag (the official MultiPruner format does not store it). A record of
        a reordering search holds the weight-magnitude order it pruned along, which is applied as it is, so the same
        channels are kept on any device and in any dtype; older and imported records sort this model's weights again.
        `compensate` refits the kept weights as `prune(compensate=True)` does, on the calibration text of the record's
        `config` (it needs the tokenizer); the weights of a compensated search are rebuilt with it and the
        `compensation_alpha` its record's `compensation` names.
        """
        if not isinstance(record, PruningRecord):
            record = PruningRecord.load(record, self.model.config, weight_reorder is not False, num_blocks)
        if get_adapter(record.model_type) is not self.adapter or record.num_hidden_layers != self.model.config.num_hidden_layers:
            raise ValueError(
                f"The record is for a {record.num_hidden_layers}-layer {record.model_type} model, but this is a "
                f"{self.model.config.num_hidden_layers}-layer {self.adapter.model_type} model."
            )
        record.structure.validate(self.model.config, self.adapter)
        dense = read_structure(self.model, self.adapter)
        if dense != PrunedStructure.dense(self.model.config, self.adapter):
            raise ValueError("`apply` needs the dense model; this one is already pruned.")
        calibration = self._compensation_text(record, compensation_alpha) if compensate else None
        if not compensate and record.compensation is not None:
            logger.warning("The record's model was compensated after pruning; pass `compensate=True` (alpha %s) to "
                           "rebuild its weights. Applying the structure alone.", record.compensation.get("alpha"))
            record = dataclasses.replace(record, compensation=None)
        reorder = record.weight_reorder if weight_reorder is None else weight_reorder
        if reorder:
            recorded = record.layer_orders(self.model.config, self.adapter)  # checked before any change
            own = weight_magnitude_orders(self.model, self.adapter)
            differing = [] if recorded is None else layers_keeping_other_units(own, recorded, record.structure)
            if differing:
                logger.warning(
                    "By its own weight magnitudes this model would keep other channels or KV groups in layers %s than "
                    "the record's order, which is applied: these are not exactly the weights the search ran on "
                    "(another checkpoint, or values rounded by the dtype of the search).", differing)
            reorder_by_weight_magnitude(self.model, self.adapter, own if recorded is None else recorded)
        if compensate:
            self._keep_dense_branches_narrowed(dense, record.structure)
        apply_structure(self.model, self.adapter, record.structure)
        self.record = record
        if compensate:
            self._compensate(calibration, compensation_alpha, progress=False)
        return to_pruned_model(self.model, self.adapter, record.structure)

    @classmethod
    def from_pretrained(cls, pruned_directory: Union[str, os.PathLike], **model_kwargs) -> "MultiPruner":
        """A pruner holding a saved pruned checkpoint, its tokenizer and its pruning record (when it has one), e.g. to
        `recover` it. `model_kwargs` go to `AutoModelForCausalLM.from_pretrained` (`dtype`, `device_map`, ...)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(pruned_directory, **model_kwargs)
        pruner = cls(model, AutoTokenizer.from_pretrained(pruned_directory))
        if os.path.isfile(os.path.join(pruned_directory, RECORD_NAME)):
            pruner.record = PruningRecord.load(pruned_directory)
        return pruner

    # ------------------------------------------------------------------ recovery after pruning
    def recover(self, config: "RecoveryConfig", teacher: Union[nn.Module, str, None] = None,
                checkpoint_dir: Union[str, os.PathLike, None] = None, resume: bool = False,
                callbacks: Optional[list] = None) -> nn.Module:
        """Distil the dense model (`teacher`, or `config.teacher`) into the pruned model, in place; the run's report
        becomes the record's `recovery` section and `save_pretrained` also writes `recovery_config.json`.

        See `optimum_multipruner.recovery.recover` (checks, LoRA merge, resumable checkpoints in `checkpoint_dir`). A
        teacher module is used in place: it is moved to the teacher's device and left in eval mode.
        """
        from .recovery import recover

        if read_structure(self.model, self.adapter) == PrunedStructure.dense(self.model.config, self.adapter):
            raise ValueError("`recover` trains a pruned model; this one is dense. Call `prune` or `apply` first.")
        report = recover(self.model, config, teacher, self.tokenizer, checkpoint_dir, resume, callbacks)
        self.recovery_config = config
        if self.record is not None:
            self.record.recovery = report
        return self.model

    def save_pretrained(self, save_directory: Union[str, os.PathLike], overwrite: bool = False) -> None:
        """Save the pruned model (safetensors), the tokenizer, the pruning record, a model card (`README.md`,
        `model_card.write_model_card`) and, after `recover`, the recovery config, atomically. In a distributed run only
        rank 0 writes; the other processes return at once."""
        if not distributed.is_main_process():
            return
        check_finite_weights(self.model)
        with atomic_directory(save_directory, overwrite) as tmp:
            self.model.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            if self.record is not None:
                self.record.save(tmp)
            if self.recovery_config is not None:
                self.recovery_config.save_pretrained(tmp)
            write_model_card(tmp, self.model.config, self.record)

    # ------------------------------------------------------------------ compensation
    def _compensation_text(self, record: PruningRecord, alpha: float) -> torch.Tensor:
        """The calibration sequences of `record`'s search (both sets, `[n, seq_len]`), checked before any change."""
        check_compensation_alpha(alpha)
        if self.tokenizer is None:
            raise ValueError("Compensation needs the model's tokenizer for its calibration text: "
                             "MultiPruner(model, tokenizer).")
        if record.config is None:
            raise ValueError("This record holds no search settings (an imported record), so it names no calibration "
                             "text to compensate on.")
        vocab_size = self.model.get_input_embeddings().num_embeddings
        sets = build_calibration_sets(MultiPrunerConfig.from_dict(record.config), self.tokenizer, vocab_size)
        return torch.cat(list(sets.values()))

    def _keep_dense_branch(self, candidate: Candidate) -> None:
        """With `compensate`: copy the sub-block a shrinking step is about to narrow, before its first narrowing."""
        if self._dense_branches is not None and candidate.action in (SHRINK_ATTENTION, SHRINK_MLP):
            self._dense_branches.keep(candidate.layer, ATTENTION if candidate.action == SHRINK_ATTENTION else MLP)

    def _keep_dense_branches_narrowed(self, dense: PrunedStructure, target: PrunedStructure) -> None:
        """Copy every sub-block that shrinking the `dense` model to `target` narrows (and keeps)."""
        self._dense_branches = DenseBranches(self.model, self.adapter)
        widths = zip(dense.num_key_value_heads, target.num_key_value_heads, dense.intermediate_size,
                     target.intermediate_size)
        for i, (kv, kept_kv, width, kept_width) in enumerate(widths):
            if 0 < kept_kv < kv:
                self._dense_branches.keep(i, ATTENTION)
            if 0 < kept_width < width:
                self._dense_branches.keep(i, MLP)

    def _compensate(self, sequences: torch.Tensor, alpha: float, progress: bool) -> None:
        """Refit the narrowed sub-blocks toward their dense copies and note it in the record."""
        refits = compensate(self.model, self._dense_branches, sequences, alpha, progress)
        self._dense_branches = None
        self.record = dataclasses.replace(self.record, compensation={
            "alpha": alpha, "calibration_sequences": len(sequences), "sequence_length": sequences.shape[1],
            "refits": refits})

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

    def _kept(self, layer: nn.Module, candidate: Candidate) -> int:
        """What the candidate's sub-block keeps after the step: 0 if removed, else its MLP width or KV heads."""
        if candidate.action in STAGE_ACTIONS["block"]:
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
