"""Perplexity exactly as the reference methods compute it.

For each fixed-length sequence: next-token cross entropy of positions `0..T-2` against tokens `1..T-1`, averaged over
the kept tokens of that sequence; perplexity = `exp(mean over sequences of the per-sequence mean NLL)`.
Tokens equal to `ignore_index` are left out (the reference passes the EOS id, and only when it is truthy).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per-sequence mean next-token NLL, `[batch]` in float64.

    logits: `[batch, seq_len, vocab]`, input_ids: `[batch, seq_len]`.
    """
    shift_logits = logits[:, :-1, :].float()  # [batch, seq_len - 1, vocab]
    labels = input_ids[:, 1:].to(shift_logits.device)  # [batch, seq_len - 1]
    token_nll = F.cross_entropy(shift_logits.transpose(1, 2), labels, reduction="none")  # [batch, seq_len - 1]
    if ignore_index:
        keep = (labels != ignore_index).to(token_nll.dtype)
        return ((token_nll * keep).sum(dim=1).double() / keep.sum(dim=1).double())
    return token_nll.double().mean(dim=1)


def reference_ignore_index(tokenizer) -> Optional[int]:
    """The reference's CE `ignore_index`: the tokenizer's EOS id when it is a truthy integer, else nothing."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos if isinstance(eos, int) and eos else None


@torch.no_grad()
def perplexity(
    model: Callable,
    sequences: torch.Tensor,
    batch_size: int = 1,
    ignore_index: Optional[int] = None,
    progress: bool = False,
    description: str = "perplexity",
) -> float:
    """Perplexity of `model` (anything called as `model(input_ids=..., attention_mask=...)` that returns `.logits`)
    on `sequences` (`[num_sequences, seq_len]`)."""
    total = 0.0
    device = getattr(model, "device", None)
    for start in tqdm(range(0, len(sequences), batch_size), desc=description, disable=not progress, leave=False):
        batch = sequences[start : start + batch_size]
        if isinstance(device, torch.device):
            batch = batch.to(device)
        logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
        total += sequence_nll(torch.as_tensor(logits), batch, ignore_index).sum().item()
    return math.exp(total / len(sequences))
