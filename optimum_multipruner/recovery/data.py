"""Training text of a recovery run: documents in a seeded order, packed into fixed-length sequences."""

from __future__ import annotations

import random

import torch

from ..data import load_text_rows
from ..progress import tensors_hash


class PackedSequences(torch.utils.data.Dataset):
    """`[num_sequences, sequence_length]` token ids served as `{"input_ids": [sequence_length]}` items."""

    def __init__(self, input_ids: torch.Tensor) -> None:
        self.input_ids = input_ids

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index]}

    def sha256(self) -> str:
        """SHA-256 of the token ids: which text the run trained on, whatever its source."""
        return tensors_hash({"input_ids": self.input_ids})


def packed_training_text(tokenizer, source: str, num_sequences: int, sequence_length: int, seed: int,
                         vocab_size: int, text_column: str = "text") -> PackedSequences:
    """The first `num_sequences` sequences of `source`'s documents in `random.Random(seed)` order, each tokenized on
    its own (no special tokens added) and followed by the EOS token, concatenated and cut into `sequence_length`
    tokens. Only as many documents as needed are tokenized. `ValueError` when the text is too short or the tokenizer
    gives ids beyond the model's embedding."""
    rows = [row for row in load_text_rows(source, "training", text_column) if row.strip()]
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    needed = num_sequences * sequence_length
    tokens: list[int] = []
    for index in order:
        tokens += tokenizer(rows[index], add_special_tokens=False).input_ids + separator
        if len(tokens) >= needed:
            break
    if len(tokens) < needed:
        raise ValueError(
            f"The training text {source} gives {len(tokens)} tokens, fewer than the {needed} the run needs "
            f"({num_sequences} sequences of {sequence_length}). Give more text or a smaller `max_tokens`."
        )
    input_ids = torch.tensor(tokens[:needed], dtype=torch.long).view(num_sequences, sequence_length)
    if int(input_ids.max()) >= vocab_size:
        raise ValueError(
            f"The tokenizer produced token id {int(input_ids.max())} but the model's embedding has only {vocab_size} "
            "rows: the tokenizer does not belong to this model."
        )
    return PackedSequences(input_ids)
