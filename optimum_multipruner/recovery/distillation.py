"""`DistillationTrainer`: transformers' `Trainer` with a loss against a frozen teacher, and a progress bar in tokens."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from ..architectures import ArchitectureAdapter


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      distillation_weight: float, temperature: float) -> torch.Tensor:
    """Sum over positions of `w * T^2 * KL(p_t^T || p_s^T) + (1 - w) * CE(p_s, labels)` (float32).

    student_logits, teacher_logits: `[batch, positions, vocab]`; labels: `[batch, positions]`.
    """
    loss = student_logits.new_zeros((), dtype=torch.float32)
    student = student_logits.float()
    if distillation_weight > 0:
        log_q = F.log_softmax(student / temperature, dim=-1)
        log_p = F.log_softmax(teacher_logits.to(student.device).float() / temperature, dim=-1)
        kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
        loss = loss + distillation_weight * temperature**2 * kl
    if distillation_weight < 1:
        ce = F.cross_entropy(student.reshape(-1, student.shape[-1]), labels.reshape(-1), reduction="sum")
        loss = loss + (1 - distillation_weight) * ce
    return loss


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Sum over positions of `1 - cos(h_s, h_t)` (float32); both `[batch, positions, hidden]`."""
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.to(student_hidden.device).float(), dim=-1)
    return (1 - cosine).sum()


class TeacherHead:
    """The teacher's hidden states entering its final norm (captured by a hook during a forward that computes a
    single position's logits), turned into logits a chunk of positions at a time by the family's own head
    (`ArchitectureAdapter.head_logits`: final norm, `lm_head`, any logit scaling)."""

    def __init__(self, teacher: nn.Module, adapter: ArchitectureAdapter) -> None:
        self.teacher = teacher
        self.adapter = adapter
        self.device = next(teacher.parameters()).device

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[batch, seq_len, hidden]` output of the teacher's last decoder layer."""
        captured = {}

        def capture(module, args):
            captured["hidden"] = args[0]

        handle = self.adapter.final_norm(self.teacher).register_forward_pre_hook(capture)
        try:
            self.teacher(input_ids=input_ids.to(self.device), logits_to_keep=1, use_cache=False)
        finally:
            handle.remove()
        return captured["hidden"]

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter.head_logits(self.teacher, hidden)


class DistillationTrainer(Trainer):
    """`Trainer` whose loss is `distillation_loss` (plus `hidden_state_weight` times `hidden_state_loss`) against a
    frozen teacher, per token, averaged; `parameter_groups` give parameters their own learning rates.

    The student runs through `Trainer`'s wrapped model (so DDP / FSDP / DeepSpeed apply to it); the teacher is a plain
    module on its own device, never wrapped, and its logits are made `head_chunk_size` positions at a time.
    """

    def __init__(self, *args: Any, teacher_head: TeacherHead, distillation_weight: float, temperature: float,
                 head_chunk_size: int, hidden_state_weight: float = 0.0, student_final_norm: Optional[nn.Module] = None,
                 parameter_groups: Optional[list[dict[str, Any]]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_head = teacher_head
        self.distillation_weight = distillation_weight
        self.temperature = temperature
        self.head_chunk_size = head_chunk_size
        self.hidden_state_weight = hidden_state_weight
        if hidden_state_weight > 0 and student_final_norm is None:
            raise ValueError("A hidden-state term needs the student's final norm (its input is the compared state).")
        self.student_final_norm = student_final_norm
        self.parameter_groups = parameter_groups

    def create_optimizer(self, model: Optional[nn.Module] = None):
        """`Trainer`'s optimizer, over `parameter_groups` (each with its own learning rate) when they are given."""
        if self.parameter_groups is None or self.optimizer is not None:
            return super().create_optimizer(model)
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model or self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_class(self.parameter_groups, **optimizer_kwargs)
        return self.optimizer
        # the loss is a mean per micro-batch: Trainer divides it by the accumulation steps, and DDP averages ranks
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Optional[int] = None):
        input_ids = inputs["input_ids"]  # [batch, seq_len]
        captured = {}
        handle = None
        if self.hidden_state_weight > 0:
            handle = self.student_final_norm.register_forward_pre_hook(
                lambda module, args: captured.__setitem__("hidden", args[0]))
        try:
            outputs = model(input_ids=input_ids, use_cache=False)
        finally:
            if handle is not None:
                handle.remove()
        student_logits = outputs.logits[:, :-1]  # [batch, seq_len - 1, vocab]
        labels = input_ids[:, 1:]
        needs_teacher = self.distillation_weight > 0 or self.hidden_state_weight > 0
        teacher_hidden = self.teacher_head.hidden_states(input_ids)[:, :-1] if needs_teacher else None
        total = student_logits.new_zeros((), dtype=torch.float32)
        for start in range(0, labels.shape[1], self.head_chunk_size):
            stop = start + self.head_chunk_size
            teacher_logits = (self.teacher_head.logits(teacher_hidden[:, start:stop])
                              if self.distillation_weight > 0 else None)
            total = total + distillation_loss(student_logits[:, start:stop], teacher_logits, labels[:, start:stop],
                                              self.distillation_weight, self.temperature)
        if self.hidden_state_weight > 0:
            total = total + self.hidden_state_weight * hidden_state_loss(captured["hidden"][:, :-1], teacher_hidden)
        loss = total / labels.numel()
        return (loss, outputs) if return_outputs else loss


class TokenProgress(TrainerCallback):
    """A progress bar counted in training tokens, with the latest loss and tokens/s (tqdm gives the ETA)."""

    def __init__(self, total_tokens: int, tokens_per_step: int) -> None:
        self.total_tokens = total_tokens
        self.tokens_per_step = tokens_per_step
        self.bar: Optional[tqdm] = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=self.total_tokens, initial=state.global_step * self.tokens_per_step,
                            unit="tok", unit_scale=True, desc="recovery", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(min(self.tokens_per_step, self.total_tokens - self.bar.n))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
