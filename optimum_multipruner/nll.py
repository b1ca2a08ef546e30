"""Per-sequence losses of a causal LM: perplexity exactly as the reference methods compute it, and the KL objective.

NLL: for each fixed-length sequence, next-token cross entropy of positions `0..T-2` against tokens `1..T-1`, averaged
over the kept tokens of that sequence; perplexity = `exp(mean over sequences of the per-sequence mean NLL)`.
Tokens equal to `ignore_index` are left out ([`reference_ignore_index`]: MultiPruner's EOS id, BlockPruner's pad id).
KL: at the same positions, `KL(p_dense || q)` of the next-token distribution `q` from the one `p` of the original
(unpruned) model, averaged over the same kept positions of each sequence.

[`head_losses`] runs the final norm, `lm_head` and the loss in chunks of positions, so its memory is bounded by
[`head_chunk_bytes`] whatever the sequence length (a 128k vocabulary at 2048 tokens stays under a fixed bound).
Per-token losses are joined before the per-sequence mean, so the result is the unchunked one; when one chunk covers
the sequence (and no KL is asked) it is the unchunked arithmetic itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

DEFAULT_HEAD_CHUNK_SIZE = 512  # positions per chunk of the head: 512 x 128k vocabulary x 4 bytes = 256 MiB of logits


@dataclass
class SequenceLosses:
    """Per-sequence mean losses, `[batch]` in float64; `kl` only when a reference was given."""

    nll: torch.Tensor
    kl: Optional[torch.Tensor] = None


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy `[batch, positions]` (float32) of `logits` `[batch, positions, vocab]`, one
    contiguous row per position (so a position's value does not depend on how many are computed together)."""
    batch, positions, vocab = logits.shape
    flat = F.cross_entropy(logits.float().reshape(-1, vocab), labels.to(logits.device).reshape(-1), reduction="none")
    return flat.view(batch, positions)


def token_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """`KL(softmax(reference_logits) || softmax(logits))` per position, `[batch, positions]` (float32), clamped at 0 so
    rounding never makes a term negative."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(reference_logits.to(logits.device).float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1).clamp_min(0)


def sequence_mean(token_values: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Mean of `token_values` `[batch, positions]` over each sequence's kept positions, `[batch]` in float64."""
    if ignore_index:
        keep = (labels.to(token_values.device) != ignore_index).to(token_values.dtype)
        return (token_values * keep).sum(dim=1).double() / keep.sum(dim=1).double()
    return token_values.double().mean(dim=1)


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per-sequence mean next-token NLL, `[batch]` in float64.

    logits: `[batch, seq_len, vocab]`, input_ids: `[batch, seq_len]`.
    """
    labels = input_ids[:, 1:]  # [batch, seq_len - 1]
    return sequence_mean(token_nll(logits[:, :-1, :], labels), labels, ignore_index)


def head_losses(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    ignore_index: Optional[int] = None,
    reference: Optional[torch.Tensor] = None,
    chunk_size: int = DEFAULT_HEAD_CHUNK_SIZE,
) -> SequenceLosses:
    """Per-sequence NLL (and KL from `reference`) of the hidden states entering the final norm.

    hidden: `[batch, seq_len, hidden]`; input_ids: `[batch, seq_len]`; head: final norm + `lm_head` (hidden states
    to logits); reference: the original model's hidden states entering the final norm, like `hidden`.
    """
    seq_len = input_ids.shape[1]
    if reference is None and chunk_size >= seq_len:
        return SequenceLosses(sequence_nll(head(hidden), input_ids, ignore_index))
    labels = input_ids[:, 1:]
    nll, kl = [], []
    for start in range(0, seq_len - 1, chunk_size):
        stop = min(start + chunk_size, seq_len - 1)
        logits = head(hidden[:, start:stop])  # [batch, chunk, vocab]
        nll.append(token_nll(logits, labels[:, start:stop]))
        if reference is not None:
            kl.append(token_kl(logits, head(reference[:, start:stop].to(hidden.device))))
        del logits
    return SequenceLosses(
        sequence_mean(torch.cat(nll, dim=1), labels, ignore_index),
        None if reference is None else sequence_mean(torch.cat(kl, dim=1), labels, ignore_index),
    )


def head_chunk_bytes(rows: int, chunk_size: int, vocab_size: int, dtype: torch.dtype, kl: bool = False) -> int:
    """Peak bytes of one chunk of [`head_losses`] on `rows` sequences: the logits in the model's `dtype`, their
    float32 copy and log-softmax (for KL: both models' logits, both log-softmaxes and the KL terms)."""
    itemsize = torch.finfo(dtype).bits // 8
    per_logit = itemsize + (0 if dtype == torch.float32 else 4) + 4
    if kl:
        per_logit = 2 * per_logit + 4
    return rows * chunk_size * vocab_size * per_logit


def reference_ignore_index(tokenizer, model_config=None, blockpruner: bool = False) -> Optional[int]:
    """The CE `ignore_index` of the reference search (and of MultiPruner's evaluation).

    MultiPruner passes the tokenizer's EOS id; BlockPruner passes `model_config.pad_token_id`. Either is used only
    when it is a truthy integer: `None` or `0` (a model without a pad id, in BlockPruner mode) ignores nothing.
    """
    token = getattr(model_config, "pad_token_id", None) if blockpruner else getattr(tokenizer, "eos_token_id", None)
    return token if isinstance(token, int) and token else None


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
