"""Checks that make a recovery run trustworthy: it stops when it diverges, it trains in a precision that can train,
its sequences fit the model, and a resumed run knows its teacher by its weights, not by its path."""

from __future__ import annotations

import hashlib
import math
from typing import Optional

import torch
from torch import nn
from transformers import TrainerCallback

from ..modeling import first_non_finite_weight
from ..utils import get_logger
from .configuration import RecoveryConfig

logger = get_logger(__name__)

# values sampled from each teacher tensor for its fingerprint (evenly spaced, first and last included)
FINGERPRINT_SAMPLES = 4096
# relative distance ||E_student - E_teacher|| / ||E_teacher|| of the input embeddings above which the teacher is not
# the student's dense origin: pruning never changes the embedding, and recovery moves it by a few percent at most
# (measured: 0 after pruning, under 0.05 after recovery; two random models of one shape: about 1.4)
ORIGIN_EMBEDDING_DISTANCE = 0.5


class RecoveryDivergedError(ValueError):
    """A recovery step produced a non-finite loss or non-finite weights."""


class StopOnDivergence(TrainerCallback):
    """Stops the run with `RecoveryDivergedError` at the first step whose logged loss or whose weights are not
    finite, before `Trainer` logs or saves that step: the last checkpoint written is the last good one. Needs
    `logging_nan_inf_filter=False`, else `Trainer` logs an average of the finite losses in place of a NaN."""

    def __init__(self, config: RecoveryConfig, dtype: torch.dtype) -> None:
        self.config = config
        self.dtype = dtype

    def on_step_end(self, args, state, control, model=None, **kwargs):
        name = first_non_finite_weight(model)
        if name is not None:
            raise RecoveryDivergedError(self._message(state.global_step, f"{name} holds NaN or infinity"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise RecoveryDivergedError(self._message(state.global_step, f"the {key} is {value}"))

    def _message(self, step: int, what: str) -> str:
        causes = [f"a learning rate too high ({self.config.learning_rate:g}: try 10x lower)"]
        if self.dtype == torch.float16 or self.config.training_args.get("fp16"):
            causes.append("float16's range (train in bfloat16 or float32)")
        return (f"Recovery diverged at step {step}: {what}. Likely cause: {' or '.join(causes)}. Nothing was saved; "
                "the checkpoint folder keeps the last good checkpoint.")


def check_precision(model: nn.Module) -> None:
    """`ValueError` for a student in float16: AdamW on float16 weights loses its small updates and overflows (pure
    float16 training made a model worse than before recovery); bfloat16 or float32 train."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float16:
        raise ValueError("Recovery does not train float16 weights (updates vanish or overflow). Load the model in "
                         "float32 (`--dtype float32`, with `--bf16 true` for mixed precision) or bfloat16.")


def check_sequence_length(model: nn.Module, config: RecoveryConfig) -> None:
    """`ValueError` when `config.sequence_length` exceeds the positions the model was trained on."""
    limit: Optional[int] = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and config.sequence_length > limit:
        raise ValueError(f"`sequence_length` {config.sequence_length} exceeds the model's {limit} positions "
                         "(max_position_embeddings); choose at most that.")


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 of the teacher's tensor names, shapes, dtypes and `FINGERPRINT_SAMPLES` evenly spaced values of each:
    the same weights give the same fingerprint wherever they are loaded from, other weights another."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        count = min(FINGERPRINT_SAMPLES, flat.numel())
        # integer spacing: float positions (linspace) round past the last index beyond 2^24 values
        index = torch.arange(count, dtype=torch.long) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[index.to(flat.device)].float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def warn_unless_teacher_is_origin(student: nn.Module, teacher: nn.Module) -> None:
    """Log a warning when the teacher's input embedding is far from the student's: pruning keeps the embedding, so
    such a teacher is not the dense model the student was pruned from (distilling from it undoes the pruned model)."""
    student_rows = student.get_input_embeddings().weight.detach().float().cpu()
    teacher_rows = teacher.get_input_embeddings().weight.detach().float().cpu()
    distance = (torch.linalg.norm(student_rows - teacher_rows) / torch.linalg.norm(teacher_rows).clamp_min(1e-12))
    if distance.item() > ORIGIN_EMBEDDING_DISTANCE:
        logger.warning("The teacher's input embedding differs from the student's (relative distance %.2f): it is "
                       "probably not the dense model the student was pruned from. Distil from that model.",
                       distance.item())
