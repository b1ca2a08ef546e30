"""`RecoveryConfig`: every setting of a recovery run (distillation from the dense model after pruning)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

from ..config_base import ConfigMixin, check_positive_int, option

RECOVERY_CONFIG_NAME = "recovery_config.json"

METHODS = ("full", "lora")
QUANTIZATIONS = ("int4",)  # quantization-aware distillation (NNCF FQ_LORA, asymmetric int4 weights in groups)
QUANTIZATION_INITS = ("awq_scale_estimation", "rtn")
# transformers' `SchedulerType` values that do not need extra arguments
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                 "inverse_sqrt", "warmup_stable_decay")
# schedules that do not depend on the run's length: a finished run can be extended to a larger budget with `resume`
LENGTH_FREE_SCHEDULERS = ("constant", "constant_with_warmup", "inverse_sqrt")
# fields a resumed run may change: the budget (for a length-free schedule), where the teacher runs, and the teacher's
# path (the run compares the teacher's weights, by their fingerprint)
RESUMABLE_CHANGES = ("max_tokens", "teacher", "teacher_device")


@dataclass
class RecoveryConfig(ConfigMixin):
    """Configuration of a recovery run: the pruned model (student) is trained to match the dense model (teacher).

    The loss is `distillation_weight * T^2 * KL(p_teacher^T || p_student^T) + (1 - distillation_weight) * CE`, per
    token (all next-token positions) and averaged, where `^T` is the softmax at `temperature`. Training runs on
    transformers' `Trainer` (bf16, gradient checkpointing, `torchrun` / `accelerate launch`, FSDP come from there;
    any other `TrainingArguments` field goes in `training_args`).

    Args:
        dataset (`str` or `list[str]`): training text: a local `.txt`/`.json`/`.jsonl`/`.parquet` file or a Hub data
            set (its train split), read as calibration text is (`optimum_multipruner.data.load_text_rows`), or a list
            of them, mixed by `dataset_weights`. Never the evaluation text.
        max_tokens (`int`): token budget: the run makes `ceil(max_tokens / tokens_per_step)` optimizer steps.
        dataset_weights (`list[float]`, *optional*): each source's share of the training sequences (default: equal).
        max_epochs (`int`): passes a run may make over a source's text (each in a new seeded order); a budget that
            needs more is refused. The record says how many unique tokens each source gave and how many passes.
        teacher (`str`, *optional*): folder or Hub id of the dense model (may instead be passed as a model object).
        text_column (`str`): column holding the text of table-like files.
        sequence_length (`int`): tokens per training sequence (documents are packed, separated by EOS).
        method (`str`): `"full"` (every weight trains) or `"lora"` (PEFT LoRA adapters, merged back at the end, so the
            result has the pruned shapes).
        learning_rate (`float`), lr_scheduler_type (`str`), warmup_steps (`int`), weight_decay (`float`),
            max_grad_norm (`float`): AdamW and its schedule, as in `TrainingArguments`; `"warmup_stable_decay"` holds
            the rate after warm-up and decays it (cosine, to 0) over the last 20% of the steps (`training_args=
            {"lr_scheduler_kwargs": {"num_decay_steps": ...}}` sets another length).
        per_device_train_batch_size (`int`), gradient_accumulation_steps (`int`): sequences per step and process;
            the global batch is their product times the number of processes.
        distillation_weight (`float`): share of the KL term in [0, 1]; the rest is next-token cross-entropy.
        temperature (`float`): softmax temperature of the KL term.
        hidden_state_weight (`float`): weight of an added term on the final hidden state (the input of the final norm,
            whose width pruning keeps): `1 - cosine similarity` to the teacher's, per token, averaged (0: off).
        lora_rank (`int`), lora_alpha (`int`), lora_dropout (`float`), lora_target_modules (`str` or `list[str]`):
            PEFT `LoraConfig` settings; `"all-linear"` targets every linear layer but the output head.
        quantization (`str`, *optional*): `"int4"` makes the run quantization-aware: every linear weight is
            fake-quantized to asymmetric int4 in groups (embeddings and output head int8) through NNCF's `FQ_LORA`
            format and only its low-rank adapters (`quantization_lora_rank`, at `learning_rate`) and quantizer scales
            (at `quantization_scale_learning_rate`) train; the result exports to an int4 OpenVINO IR with the trained
            values. Start it from a pruned model (one run) or from a float-recovered one.
        quantization_group_size (`int`), quantization_ratio (`float`): int4 group size and share of the linear
            layers in int4 (the rest int8), as in `OVWeightQuantizationConfig`.
        quantization_init (`str`): `"awq_scale_estimation"` (data-aware start on the first training sequences) or
            `"rtn"` (round to nearest).
        save_steps (`int`): a resumable checkpoint every so many optimizer steps (0: none).
        logging_steps (`int`): the loss curve's resolution, in optimizer steps.
        seed (`int`): seed of the document order, of the data sampler and of the LoRA adapters' initialisation.
        bf16 (`bool`), gradient_checkpointing (`bool`): as in `TrainingArguments`.
        teacher_device (`str`, *optional*): device of the teacher (e.g. `"cuda:1"`); default: the student's.
        head_chunk_size (`int`): positions per chunk of the teacher's output head (bounds its logits' memory for
            large vocabularies).
        training_args (`dict`): further `TrainingArguments` fields (e.g. `{"fsdp": "full_shard"}`, `{"optim":
            "adamw_torch_fused"}`); they override the ones derived from this config.
        lora_config (`dict`): further PEFT `LoraConfig` fields of `method="lora"` (e.g. `{"use_rslora": True}`);
            they override the `lora_*` ones. Both are checked by building the upstream object before training.
    """

    CONFIG_NAME: ClassVar[str] = RECOVERY_CONFIG_NAME
    SORT_JSON_KEYS: ClassVar[bool] = False

    dataset: Union[str, list[str]] = option(
        help="training text: local .txt/.json/.jsonl/.parquet file or Hub data set (never evaluation text), or several, "
        "comma-separated, mixed by --dataset-weights")
    max_tokens: int = option(help="token budget of the run")
    teacher: Optional[str] = option(None, "the dense model it was pruned from: folder or Hub id")
    dataset_weights: Optional[list[float]] = option(
        None, "comma-separated share of each --dataset source (default: equal)")
    max_epochs: int = option(1, "passes a run may make over a source's text (a larger budget is refused)")
    text_column: str = option("text", "text column of table-like files")
    sequence_length: int = option(512, "tokens per training sequence")
    method: str = option("full", "full (every weight trains) or lora (PEFT adapters, merged back at the end)",
                         choices=METHODS)
    learning_rate: float = option(5e-5, "AdamW learning rate")
    lr_scheduler_type: str = option("constant_with_warmup", "transformers schedule name", choices=LR_SCHEDULERS)
    warmup_steps: int = option(10, "warm-up optimizer steps")
    weight_decay: float = option(0.0, "AdamW weight decay", advanced=True)
    max_grad_norm: float = option(1.0, "gradient clipping norm", advanced=True)
    per_device_train_batch_size: int = option(1, "sequences per step and process")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    distillation_weight: float = option(1.0, "share of the KL-to-teacher term; the rest is next-token CE")
    temperature: float = option(1.0, "softmax temperature of the KL term")
    hidden_state_weight: float = option(0.0, "weight of the final-hidden-state term, 1 - cosine to the teacher's")
    lora_rank: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_target_modules: Union[str, list[str]] = option("all-linear", "comma-separated module names, or all-linear")
    quantization: Optional[str] = option(
        None, "int4: quantization-aware distillation (NNCF FQ_LORA); the output is an int4 OpenVINO IR",
        choices=QUANTIZATIONS, aliases=("--weight-format",))
    quantization_group_size: int = option(64, "int4 group size", aliases=("--group-size",))
    quantization_ratio: float = option(1.0, "share of the linear layers in int4, the rest int8", aliases=("--ratio",))
    quantization_init: str = option("awq_scale_estimation", "how the int4 weights start", choices=QUANTIZATION_INITS)
    quantization_lora_rank: int = option(32, "rank of the quantized weights' trainable adapters")
    quantization_scale_learning_rate: float = option(1e-5, "learning rate of the quantizer scales")
    save_steps: int = option(50, "a resumable checkpoint every N optimizer steps in --checkpoint-dir")
    logging_steps: int = option(10, "loss-curve resolution in optimizer steps")
    seed: int = option(42, "seed of the document order")
    bf16: bool = option(False, "train in bf16 mixed precision (GPU, or CPU autocast)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    teacher_device: Optional[str] = option(None, "device of the teacher, e.g. cuda:1 (default: the student's)")
    head_chunk_size: int = option(512, "positions per chunk of the teacher's output head", advanced=True)
    training_args: dict[str, Any] = option(
        help='further transformers TrainingArguments, e.g. \'{"fsdp": "full_shard"}\'', default_factory=dict)
    lora_config: dict[str, Any] = option(
        help='further PEFT LoraConfig fields of --method lora, e.g. \'{"use_rslora": true}\'', default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("dataset", "dataset_weights", "lora_target_modules"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        self.validate()

    @property
    def sources(self) -> list[str]:
        """The training text sources, as a list."""
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)

    def validate(self) -> None:
        """`ValueError` naming the first field out of range."""
        sources = self.dataset if isinstance(self.dataset, list) else [self.dataset]
        if not sources or not all(isinstance(source, str) and source.strip() for source in sources):
            raise ValueError("`dataset` must name a local text file or a Hub data set, or be a non-empty list of them.")
        if self.dataset_weights is not None:
            if not isinstance(self.dataset_weights, list) or len(self.dataset_weights) != len(sources):
                raise ValueError(f"`dataset_weights` must give one weight per source ({len(sources)}), got "
                                 f"{self.dataset_weights!r}.")
            for weight in self.dataset_weights:
                _check_number("dataset_weights", weight, low=0.0, low_open=True)
        for name in ("max_tokens", "max_epochs", "sequence_length", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "lora_rank", "logging_steps", "head_chunk_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "save_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
        if self.sequence_length < 2:
            raise ValueError("`sequence_length` must be at least 2 (one next-token prediction).")
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}.")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(f"`lr_scheduler_type` must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_type!r}.")
        _check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("max_grad_norm", self.max_grad_norm, low=0.0)
        _check_number("distillation_weight", self.distillation_weight, low=0.0, high=1.0)
        _check_number("temperature", self.temperature, low=0.0, low_open=True)
        _check_number("hidden_state_weight", self.hidden_state_weight, low=0.0)
        _check_number("lora_alpha", self.lora_alpha, low=0.0, low_open=True)
        _check_number("lora_dropout", self.lora_dropout, low=0.0, high=1.0)
        targets = self.lora_target_modules
        if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
        ):
            raise ValueError("`lora_target_modules` must be `\"all-linear\"` or a non-empty list of module names.")
        if self.quantization is not None:
            if self.quantization not in QUANTIZATIONS:
                raise ValueError(f"`quantization` must be None or one of {QUANTIZATIONS}, got {self.quantization!r}.")
            if self.method != "full":
                raise ValueError("A quantization-aware recovery trains NNCF's own low-rank adapters of the quantized "
                                 "weights; leave `method` at 'full' (its LoRA settings are `quantization_lora_rank`).")
        if self.quantization_init not in QUANTIZATION_INITS:
            raise ValueError(f"`quantization_init` must be one of {QUANTIZATION_INITS}, got "
                             f"{self.quantization_init!r}.")
        for name in ("quantization_group_size", "quantization_lora_rank"):
            check_positive_int(name, getattr(self, name))
        _check_number("quantization_ratio", self.quantization_ratio, low=0.0, high=1.0, low_open=True)
        _check_number("quantization_scale_learning_rate", self.quantization_scale_learning_rate, low=0.0)
        for name, upstream in (("training_args", "TrainingArguments"), ("lora_config", "LoraConfig")):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"`{name}` must be a dict of {upstream} fields, got {getattr(self, name)!r}.")

    @property
    def length_free_schedule(self) -> bool:
        """Whether the learning-rate schedule is the same whatever the run's length (so a run can be extended)."""
        return self.lr_scheduler_type in LENGTH_FREE_SCHEDULERS

    def resume_differences(self, saved: "RecoveryConfig") -> list[str]:
        """Fields that differ from an interrupted run's config and may not change on resume."""
        mine, theirs = self.to_dict(), saved.to_dict()
        differing = [key for key in mine if mine[key] != theirs.get(key) and key not in RESUMABLE_CHANGES]
        if self.max_tokens != saved.max_tokens and not self.length_free_schedule:
            differing.append("max_tokens (the schedule depends on the run's length)")
        return differing


def _check_number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """`ValueError` unless `value` is a real number in `[low, high]` (`(low, high]` with `low_open`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        upper = "inf)" if high == math.inf else f"{high}]"
        raise ValueError(f"`{name}` must be a number in {bracket}{low}, {upper}, got {value!r}.")
