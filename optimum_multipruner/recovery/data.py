"""Training text of a recovery run: documents of one or several sources in a seeded order, packed into fixed-length
sequences, the sources mixed by weight, a source read again (in a new seeded order) when the budget needs more
passes than one and the run allows them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..data import load_text_rows
from ..resume_state import tensors_hash


class PackedSequences(torch.utils.data.Dataset):
    """`[num_sequences, sequence_length]` token ids served as `{"input_ids": [sequence_length]}` items; `sources`
    says how much of each source they hold (see `SourceUsage`)."""

    def __init__(self, input_ids: torch.Tensor, sources: Optional[list["SourceUsage"]] = None) -> None:
        self.input_ids = input_ids
        self.sources = sources or []

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index]}

    def sha256(self) -> str:
        """SHA-256 of the token ids: which text the run trained on, whatever its source."""
        return tensors_hash({"input_ids": self.input_ids})


@dataclass
class SourceUsage:
    """How much of one source a run reads: `tokens` in all, `unique_tokens` of them distinct text (the whole source
    once it is read again), so `epochs = tokens / unique_tokens` passes."""

    source: str
    weight: float
    sequences: int
    tokens: int
    unique_tokens: int

    @property
    def epochs(self) -> float:
        return self.tokens / self.unique_tokens if self.unique_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "weight": self.weight, "sequences": self.sequences, "tokens": self.tokens,
                "unique_tokens": self.unique_tokens, "epochs": round(self.epochs, 4)}


def source_schedule(weights: Sequence[float], num_sequences: int) -> list[int]:
    """The source of each of `num_sequences` sequences: smooth weighted round robin, so every prefix holds the
    sources in the weights' proportions (to one sequence) and a longer run's schedule starts with a shorter one's."""
    total = float(sum(weights))
    taken = [0] * len(weights)
    schedule = []
    for position in range(1, num_sequences + 1):
        behind = [weight / total * position - count for weight, count in zip(weights, taken)]
        chosen = max(range(len(weights)), key=lambda index: behind[index])  # ties: the first source
        taken[chosen] += 1
        schedule.append(chosen)
    return schedule


def _source_tokens(tokenizer, source: str, needed: int, seed: int, max_epochs: int,
                   text_column: str) -> tuple[list[int], int]:
    """The first `needed` tokens of `source`'s documents, each tokenized on its own (no special tokens) and followed
    by EOS, in `random.Random(seed)` order; pass `e` > 0 reads the documents again in `random.Random(f"{seed}:{e}")`
    order. Returns the tokens and how many distinct tokens they hold. `ValueError` beyond `max_epochs` passes."""
    rows = [row for row in load_text_rows(source, "training", text_column) if row.strip()]
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    tokenized: dict[int, list[int]] = {}
    tokens: list[int] = []
    for epoch in range(max_epochs):
        order_seed = seed if epoch == 0 else f"{seed}:{epoch}"
        for index in random.Random(order_seed).sample(range(len(rows)), len(rows)):
            if index not in tokenized:
                tokenized[index] = tokenizer(rows[index], add_special_tokens=False).input_ids + separator
            tokens += tokenized[index]
            if len(tokens) >= needed:
                return tokens[:needed], min(needed, sum(map(len, tokenized.values())))
    passes = "one pass" if max_epochs == 1 else f"{max_epochs} passes"
    unique = sum(map(len, tokenized.values()))
    raise ValueError(
        f"The training text {source} gives {unique} tokens ({passes}: {len(tokens)}), fewer than the {needed} the "
        "run needs from it. Give more text, a smaller `max_tokens`, or allow more passes with `max_epochs`."
    )


def packed_training_text(tokenizer, sources: Sequence[str], num_sequences: int, sequence_length: int, seed: int,
                         vocab_size: int, text_column: str = "text", weights: Optional[Sequence[float]] = None,
                         max_epochs: int = 1) -> PackedSequences:
    """`num_sequences` sequences of `sequence_length` tokens from `sources`, mixed by `weights` (default: equal) in
    the order of `source_schedule`; each source's documents are packed as `_source_tokens` reads them (only as many
    documents as needed are tokenized). `ValueError` when a source is too short for its share in `max_epochs` passes
    or the tokenizer gives ids beyond the model's embedding."""
    weights = list(weights) if weights is not None else [1.0] * len(sources)
    schedule = source_schedule(weights, num_sequences)
    rows_by_source, usage = [], []
    for index, source in enumerate(sources):
        count = schedule.count(index)
        tokens, unique = _source_tokens(tokenizer, source, count * sequence_length, seed, max_epochs, text_column) \
            if count else ([], 0)
        rows_by_source.append(torch.tensor(tokens, dtype=torch.long).view(count, sequence_length))
        usage.append(SourceUsage(source, weights[index], count, count * sequence_length, unique))
    taken = [0] * len(sources)
    order = []
    for index in schedule:
        order.append(rows_by_source[index][taken[index]])
        taken[index] += 1
    input_ids = torch.stack(order) if order else torch.empty(0, sequence_length, dtype=torch.long)
    if input_ids.numel() and int(input_ids.max()) >= vocab_size:
        raise ValueError(
            f"The tokenizer produced token id {int(input_ids.max())} but the model's embedding has only {vocab_size} "
            "rows: the tokenizer does not belong to this model."
        )
    return PackedSequences(input_ids, usage)
