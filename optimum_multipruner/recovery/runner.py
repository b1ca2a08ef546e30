"""`recover`: distil the dense model (teacher) into a pruned model (student) with transformers' `Trainer`.

Every input is checked before the first training step (teacher, student, LoRA targets, data, checkpoint folder). A run
with a `checkpoint_dir` writes a `Trainer` checkpoint every `save_steps` optimizer steps; `resume=True` continues from
the last complete one (a checkpoint is complete once `Trainer` has written its `trainer_state.json`, which it writes
last) to exactly the weights an uninterrupted run reaches.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainingArguments,
    get_polynomial_decay_schedule_with_warmup,
)

from ..architectures import get_adapter
from ..resume_state import state_dict_hash
from ..structure import PrunedStructure
from ..surgery import count_parameters, read_structure
from ..utils import atomic_write_text, get_logger, read_json
from .checks import (
    StopOnDivergence,
    check_precision,
    check_sequence_length,
    teacher_fingerprint,
    warn_unless_teacher_is_origin,
)
from .configuration import RecoveryConfig
from .data import PackedSequences, packed_training_text
from .distillation import DistillationTrainer, TeacherHead, TokenProgress

logger = get_logger(__name__)

RUN_FILE = "recovery_run.json"  # in the checkpoint folder: what a resumed run must match
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint is complete once `MarkCompleteCheckpoint` wrote this file into it: `Trainer` calls `on_save` after it
# saved the checkpoint (its documented callback event), so a save killed half-way has no mark.
_COMPLETE_MARK = "multipruner_checkpoint_complete.json"
_EARLIER_COMPLETE_MARK = "trainer_state.json"  # runs of earlier versions (no marks): Trainer's state file
QUANTIZATION_CALIBRATION_SEQUENCES = 32  # training sequences AWQ and scale estimation start a quantized run from
# the rate transformers' polynomial schedule ends at unless `lr_scheduler_kwargs` sets `lr_end`
POLYNOMIAL_LR_END = inspect.signature(get_polynomial_decay_schedule_with_warmup).parameters["lr_end"].default
WSD_DECAY_SHARE = 0.2  # `warmup_stable_decay`: the share of the steps its decay takes unless `training_args` sets it


def recover(model: nn.Module, config: RecoveryConfig, teacher: Union[nn.Module, str, None] = None, tokenizer=None,
            checkpoint_dir: Union[str, os.PathLike, None] = None, resume: bool = False,
            callbacks: Optional[list[TrainerCallback]] = None) -> dict[str, Any]:
    """Train the pruned `model` in place to match `teacher` on `config.dataset`; return the run's report (the
    `recovery` section of the pruning record: config, teacher, tokens seen, data SHA-256, loss curve).

    `teacher` is the dense model (a module, or a folder / Hub id; default `config.teacher`), of the student's family
    and vocabulary. With `method="lora"`, PEFT LoRA adapters train and are merged back, so `model` keeps its pruned
    shapes and classes. `checkpoint_dir` makes the run resumable (`resume=True` continues it). `callbacks` are
    added to the `Trainer`'s own.
    """
    if tokenizer is None:
        raise ValueError("Recovery needs the student's tokenizer to read the training text.")
    check_precision(model)
    check_sequence_length(model, config)
    teacher = _load_teacher(teacher if teacher is not None else config.teacher, model, config)
    check_teacher(model, teacher, tokenizer, config.teacher if isinstance(config.teacher, str) else None,
                  same_size=config.quantization is not None)
    warn_unless_teacher_is_origin(model, teacher)
    if config.method == "lora":
        check_lora_targets(model, config.lora_target_modules)
    if config.quantization is not None:
        from .quantization import check_group_size

        check_group_size(model, config.quantization_group_size)
    _check_schedule(_training_arguments(config, checkpoint_dir or tempfile.gettempdir(),
                                        checkpoints=checkpoint_dir is not None))
    if config.method == "lora":
        _lora_config(config)
    resume_from = _check_checkpoint_dir(checkpoint_dir, resume)

    checkpoints = checkpoint_dir is not None
    output_dir = checkpoint_dir if checkpoints else tempfile.mkdtemp(prefix="multipruner-recovery-")
    try:
        return _train(model, config, teacher, tokenizer, output_dir, checkpoints, resume, resume_from, callbacks)
    finally:
        if not checkpoints:  # Trainer's output folder of a run without checkpoints
            shutil.rmtree(output_dir, ignore_errors=True)


def _train(model: nn.Module, config: RecoveryConfig, teacher: nn.Module, tokenizer,
           output_dir: Union[str, os.PathLike], checkpoints: bool, resume: bool, resume_from: Optional[str],
           callbacks: Optional[list[TrainerCallback]]) -> dict[str, Any]:
    """The checked run: training text, `Trainer`, LoRA merge, report. `output_dir` is `Trainer`'s; with
    `checkpoints` it is the run's checkpoint folder (resumable checkpoints and the run file), else a scratch folder."""
    args = _training_arguments(config, output_dir, checkpoints=checkpoints)
    # from the arguments Trainer runs with: `training_args` may override the batch
    tokens_per_step = config.sequence_length * args.per_device_train_batch_size \
        * args.gradient_accumulation_steps * args.world_size
    steps = math.ceil(config.max_tokens / tokens_per_step)
    args.max_steps = steps
    if config.lr_scheduler_type == "warmup_stable_decay":  # transformers' WSD schedule needs its decay length
        decay_steps = max(1, min(round(WSD_DECAY_SHARE * steps), steps - config.warmup_steps))
        args.lr_scheduler_kwargs = {"num_decay_steps": decay_steps, **(args.lr_scheduler_kwargs or {})}
    data = packed_training_text(tokenizer, config.sources, steps * tokens_per_step // config.sequence_length,
                                config.sequence_length, config.seed, model.get_input_embeddings().num_embeddings,
                                config.text_column, config.dataset_weights, config.max_epochs)
    run = {"config": config.to_dict(), "num_sequences": len(data), "data_sha256": data.sha256(),
           "student_sha256": state_dict_hash(model), "teacher_sha256": teacher_fingerprint(teacher)}
    if checkpoints:
        if resume:
            _check_same_run(output_dir, run, data, config)
        if args.process_index == 0:
            os.makedirs(output_dir, exist_ok=True)
            atomic_write_text(os.path.join(output_dir, RUN_FILE), _json(run))

    use_cache = model.config.use_cache
    parameter_groups = None
    if config.quantization is not None:
        from .quantization import fake_quantize, parameter_groups as quantizer_groups

        student = fake_quantize(model, config, data.input_ids[:QUANTIZATION_CALIBRATION_SEQUENCES])
        parameter_groups = quantizer_groups(model, config.learning_rate, config.quantization_scale_learning_rate)
    else:
        student = _with_lora(model, config) if config.method == "lora" else model.requires_grad_(True)
    teacher_device = torch.device(config.teacher_device) if config.teacher_device else args.device
    teacher.to(teacher_device).eval()  # runs under no_grad
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=data,
        teacher_head=TeacherHead(teacher, get_adapter(teacher)),
        distillation_weight=config.distillation_weight, temperature=config.temperature,
        hidden_state_weight=config.hidden_state_weight, student_final_norm=get_adapter(model).final_norm(model),
        head_chunk_size=config.head_chunk_size, parameter_groups=parameter_groups, callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TokenProgress(steps * tokens_per_step, tokens_per_step))
    trainer.add_callback(StopOnDivergence(config, next(model.parameters()).dtype))
    trainer.add_callback(MarkCompleteCheckpoint())
    logger.info("Recovery: %d steps of %d tokens (%s, %s) on %s.", steps, tokens_per_step, config.method,
                "resumed from " + resume_from if resume_from else "from the start", ", ".join(config.sources))
    trainer.train(resume_from_checkpoint=resume_from)
    model.config.use_cache = use_cache  # `Trainer` sets it to `args.use_cache` (False) for training
    if config.method == "lora":
        student.merge_and_unload()  # writes the adapters into `model`'s own linear layers
    model.eval()
    return {
        "config": config.to_dict(),
        "teacher": config.teacher if isinstance(config.teacher, str) else getattr(teacher, "name_or_path", None),
        "teacher_sha256": run["teacher_sha256"],
        "tokens_seen": trainer.state.global_step * tokens_per_step,
        "steps": trainer.state.global_step,
        "data_sha256": run["data_sha256"],
        "data": [usage.to_dict() for usage in data.sources],
        "loss_curve": [
            {"step": entry["step"], "tokens": entry["step"] * tokens_per_step, "loss": entry["loss"]}
            for entry in trainer.state.log_history if "loss" in entry
        ],
    }


def check_teacher(student: nn.Module, teacher: nn.Module, tokenizer, teacher_source: Optional[str] = None,
                  same_size: bool = False) -> None:
    """`ValueError` unless `teacher` is a model of the student's family and vocabulary, of the same depth and width,
    and the student is a strictly smaller model of it (each layer keeps at most the teacher's heads and MLP width);
    with `same_size` (a quantization-aware run: the dense model may learn its own int4 weights) it may equal it."""
    adapter = get_adapter(student)
    teacher_adapter = get_adapter(teacher)
    if teacher_adapter is not adapter:
        raise ValueError(f"The teacher is a {teacher_adapter.model_type} model, but the student is a pruned "
                         f"{adapter.model_type} model: distil from the dense model the student was pruned from.")
    rows = student.get_input_embeddings().num_embeddings, teacher.get_input_embeddings().num_embeddings
    if rows[0] != rows[1]:
        raise ValueError(f"The teacher's vocabulary ({rows[1]} tokens) differs from the student's ({rows[0]}): "
                         "the KL needs the same vocabulary.")
    for name in ("hidden_size", "num_hidden_layers"):
        if getattr(student.config, name) != getattr(teacher.config, name):
            raise ValueError(f"The student's {name} ({getattr(student.config, name)}) differs from the teacher's "
                             f"({getattr(teacher.config, name)}): the student is not a pruned copy of this teacher.")
    read_structure(student, adapter).validate(teacher.config, adapter)
    teacher_structure = read_structure(teacher, adapter)
    if teacher_structure != PrunedStructure.dense(teacher.config, adapter):
        logger.warning("The teacher is itself pruned; recovery distils from the model it is given.")
    if count_parameters(student) > count_parameters(teacher) or (
            count_parameters(student) == count_parameters(teacher) and not same_size):
        raise ValueError("The student is not smaller than the teacher; recovery distils the dense model into a "
                         "pruned one.")
    if teacher_source is not None and os.path.isfile(os.path.join(teacher_source, "tokenizer.json")):
        teacher_vocab = AutoTokenizer.from_pretrained(teacher_source).get_vocab()
        if teacher_vocab != tokenizer.get_vocab():
            raise ValueError(f"The tokenizer of {teacher_source} differs from the student's: teacher and student must "
                             "share one tokenizer.")


def check_lora_targets(model: nn.Module, targets: Union[str, list[str]]) -> None:
    """`ValueError` naming the LoRA target modules that match no linear layer of `model`."""
    if isinstance(targets, str):
        return  # "all-linear", or a regular expression PEFT matches itself
    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = sorted(set(targets) - linear_names)
    if missing:
        raise ValueError(f"LoRA target modules {missing} match no linear layer of the model; its linear layers are "
                         f"{sorted(linear_names)}.")


def last_complete_checkpoint(checkpoint_dir: Union[str, os.PathLike]) -> Optional[str]:
    """The `checkpoint-N` folder with the largest N that `Trainer` finished writing, or None."""
    if not os.path.isdir(checkpoint_dir):
        return None
    folders = [match for match in map(_CHECKPOINT.match, os.listdir(checkpoint_dir)) if match]

    def holding(mark: str) -> list[int]:
        return [int(match.group(1)) for match in folders
                if os.path.isfile(os.path.join(checkpoint_dir, match.group(0), mark))]

    steps = holding(_COMPLETE_MARK) or holding(_EARLIER_COMPLETE_MARK)  # the latter: earlier versions wrote no marks
    return os.path.join(checkpoint_dir, f"checkpoint-{max(steps)}") if steps else None


class MarkCompleteCheckpoint(TrainerCallback):
    """Marks each checkpoint complete once `Trainer` has saved it (`on_save`), for `last_complete_checkpoint`."""

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            atomic_write_text(os.path.join(folder, _COMPLETE_MARK), _json({"step": state.global_step}))


def _load_teacher(teacher: Union[nn.Module, str, None], student: nn.Module, config: RecoveryConfig) -> nn.Module:
    if teacher is None:
        raise ValueError("Recovery needs a teacher: the dense model, as a module or as `RecoveryConfig.teacher`.")
    if isinstance(teacher, nn.Module):
        return teacher
    dtype = next(student.parameters()).dtype
    return AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype, device_map=config.teacher_device)


def _check_checkpoint_dir(checkpoint_dir: Union[str, os.PathLike, None], resume: bool) -> Optional[str]:
    """The checkpoint to resume from (None: start); refuses to start over a run in progress or to resume none."""
    if checkpoint_dir is None:
        if resume:
            raise ValueError("`resume=True` needs the `checkpoint_dir` of the interrupted run.")
        return None
    if os.path.isfile(checkpoint_dir):
        raise FileExistsError(f"The checkpoint path {checkpoint_dir} is a file; give a directory path.")
    started = os.path.isfile(os.path.join(checkpoint_dir, RUN_FILE))
    if resume and not started:
        raise ValueError(f"Cannot resume: {checkpoint_dir} holds no recovery run ({RUN_FILE} is missing).")
    if started and not resume:
        raise FileExistsError(f"{checkpoint_dir} already holds a recovery run. Pass `resume=True` (`--resume`) to "
                              "continue it, or choose another folder.")
    if not started and os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir):
        raise FileExistsError(f"The checkpoint folder {checkpoint_dir} is not empty and holds no recovery run "
                              f"({RUN_FILE} is missing): a run writes and rotates its own checkpoints only. Choose "
                              "a new or empty folder.")
    latest = last_complete_checkpoint(checkpoint_dir)
    if resume and latest is not None:  # drop checkpoints an interruption left half-written
        for name in os.listdir(checkpoint_dir):
            match = _CHECKPOINT.match(name)
            if match and int(match.group(1)) > int(_CHECKPOINT.match(os.path.basename(latest)).group(1)):
                shutil.rmtree(os.path.join(checkpoint_dir, name))
    return latest


def _check_same_run(checkpoint_dir: Union[str, os.PathLike], run: dict[str, Any], data: PackedSequences,
                    config: RecoveryConfig) -> None:
    """`ValueError` unless the run to resume has this configuration (a larger budget may extend a run with a
    length-free schedule), this starting student and the same training text (as a prefix, when extended)."""
    saved = read_json(os.path.join(checkpoint_dir, RUN_FILE))
    saved_config = RecoveryConfig.from_dict(saved["config"])
    differing = config.resume_differences(saved_config)
    if differing:
        raise ValueError(f"Cannot resume: the configuration differs from the interrupted run's in {differing}.")
    if config.max_tokens < saved_config.max_tokens:
        raise ValueError(f"Cannot resume with max_tokens={config.max_tokens}: the interrupted run's budget is "
                         f"{saved_config.max_tokens}; a resumed run can only keep or extend it.")
    if saved["student_sha256"] != run["student_sha256"]:
        raise ValueError("Cannot resume: the student's weights differ from those the interrupted run started from.")
    if saved.get("teacher_sha256", run["teacher_sha256"]) != run["teacher_sha256"]:
        raise ValueError("Cannot resume: the teacher's weights differ from those of the interrupted run's teacher.")
    if len(data) < saved["num_sequences"] or \
            PackedSequences(data.input_ids[: saved["num_sequences"]]).sha256() != saved["data_sha256"]:
        raise ValueError("Cannot resume: the training text (or tokenizer) differs from the interrupted run's.")


def _training_arguments(config: RecoveryConfig, output_dir: Union[str, os.PathLike],
                        checkpoints: bool) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=1,  # set from the budget once the number of processes is known
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN, and `StopOnDivergence` stops the run
        save_strategy="steps" if checkpoints and config.save_steps else "no",
        save_steps=config.save_steps or 1,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy="sequential",  # documents are already in a seeded order; keeps extensions exact
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
    )
    if config.bf16 and not torch.accelerator.is_available():
        settings["use_cpu"] = True  # bf16 autocast on the CPU: without it `TrainingArguments` asks for a GPU
    return _upstream(TrainingArguments, {**settings, **config.training_args}, "training_args")


def _check_schedule(args: TrainingArguments) -> None:
    """Transformers' polynomial schedule decays to `lr_end` and raises at the first step unless the rate is above it."""
    if args.lr_scheduler_type == "polynomial":
        lr_end = (args.lr_scheduler_kwargs or {}).get("lr_end", POLYNOMIAL_LR_END)
        if not args.learning_rate > lr_end:
            raise ValueError(f"The polynomial schedule decays to lr_end {lr_end}; `learning_rate` {args.learning_rate} "
                             "must be larger (or set `training_args={'lr_scheduler_kwargs': {'lr_end': ...}}`).")


def _lora_config(config: RecoveryConfig):
    from peft import LoraConfig

    settings = dict(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                    target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
    return _upstream(LoraConfig, {**settings, **config.lora_config}, "lora_config")


def _upstream(cls: type, settings: dict[str, Any], field: str):
    """`cls(**settings)`, a bad value or unknown name in the config's `field` pass-through named as such."""
    try:
        return cls(**settings)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{field}` does not make a valid {cls.__name__}: {error}") from error


def _with_lora(model: nn.Module, config: RecoveryConfig) -> nn.Module:
    from peft import get_peft_model

    torch.manual_seed(config.seed)  # the adapters' initialisation, so that a run reproduces
    return get_peft_model(model, _lora_config(config))


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"
