"""`MultiPruner`: the training-free pruner, a facade over the functional core. It holds a model, its tokenizer and the
last pruning record; `prune` (`search.prune`) searches or `apply` (`apply_record.apply`) applies a saved record, and
leaves a physically smaller model of a registered pruned class that `save_pretrained`/`from_pretrained` round-trip;
`recover` (`recovery.recover`) distils the dense model into it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Union

from torch import nn

from . import distributed
from .apply_record import apply
from .architectures import ArchitectureAdapter, get_adapter
from .configuration import CompensationConfig, MultiPrunerConfig
from .devices import check_placement
from .model_card import write_model_card
from .modeling import check_finite_weights
from .record import RECORD_NAME, PruningRecord
from .scoring import ModelEvaluator
from .search import prune
from .structure import PrunedStructure
from .surgery import read_structure
from .utils import atomic_directory

if TYPE_CHECKING:
    from .recovery import RecoveryConfig


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

    def prune(self, config: MultiPrunerConfig, progress: bool = True, **options: Any) -> nn.Module:
        """Run the greedy search of `config` and return the (same, now pruned) model. The steps are in `self.record`.

        `options` are [`search.prune`]'s (`checkpoint_dir`, `resume_from`, `shared_from`, `compensation`),
        as are the checks, resuming and sharing steps, and the search over processes.
        """
        self.record = prune(self.model, self.tokenizer, config, progress, evaluator_class=self.evaluator_class,
                            **options)
        return self.model

    def apply(self, record: Union[PruningRecord, str, os.PathLike], weight_reorder: Optional[bool] = None,
              num_blocks: Optional[int] = None, compensation: Optional[CompensationConfig] = None,
              compensation_alpha: Optional[float] = None, *, compensate: Optional[bool] = None) -> nn.Module:
        """Shrink the dense model to a saved record (ours, or an official MultiPruner / BlockPruner JSON) and return
        it; the record applied is `self.record`. The arguments are [`apply_record.apply`]'s."""
        self.record = apply(self.model, record, self.tokenizer, weight_reorder, num_blocks, compensation,
                            compensation_alpha, compensate=compensate)
        return self.model

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

        if config.quantization is None and \
                read_structure(self.model, self.adapter) == PrunedStructure.dense(self.model.config, self.adapter):
            raise ValueError("`recover` trains a pruned model; this one is dense. Call `prune` or `apply` first "
                             "(a dense model can only learn its int4 weights: `quantization='int4'`).")
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
        if self.recovery_config is not None and self.recovery_config.quantization is not None:
            raise ValueError("A quantization-aware recovery ends in int4 weights that only an OpenVINO IR holds: "
                             "export the model with `optimum_multipruner.exporters.export_openvino(pruner.model, "
                             "output_dir, tokenizer=pruner.tokenizer, record=pruner.record)` instead.")
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
