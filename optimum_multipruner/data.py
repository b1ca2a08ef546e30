"""Text sources (Hub names or local files) and the reference calibration pipeline.

The reference methods pick rows, join them with blank lines into one string, tokenize it once and cut it into
non-overlapping fixed-length sequences, dropping the remainder. `build_sequences` does exactly that.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .configuration import ATTENTION_STAGE, BLOCK_STAGE, MLP_STAGE
from .utils import get_logger

logger = get_logger(__name__)

LOCAL_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


@dataclass(frozen=True)
class HubTextSource:
    """Where a named data set lives on the Hugging Face Hub."""

    path: str
    name: Optional[str]
    splits: dict[str, str]  # purpose ("calibration" | "evaluation") -> split
    text_column: str


HUB_SOURCES = {
    "alpaca": HubTextSource("tatsu-lab/alpaca", None, {"calibration": "train"}, "text"),
    "wikitext2": HubTextSource(
        "Salesforce/wikitext", "wikitext-2-raw-v1", {"calibration": "train", "evaluation": "test"}, "text"
    ),
    "ptb": HubTextSource(
        "ptb-text-only/ptb_text_only", "penn_treebank", {"calibration": "train", "evaluation": "test"}, "sentence"
    ),
    "c4": HubTextSource(
        "allenai/c4", "en", {"calibration": "train", "evaluation": "validation"}, "text"
    ),
}


def is_local_file(source: str) -> bool:
    return os.path.splitext(source)[1].lower() in LOCAL_FORMATS


def load_text_rows(source: str, purpose: str = "calibration", text_column: str = "text") -> list[str]:
    """Rows of text from a Hub data set name (see `HUB_SOURCES`, or any `owner/name`) or a local file.

    Local `.txt` files give one row per line (as `datasets`' text loader does); `.json`, `.jsonl` and `.parquet`
    files give one row per record, read from `text_column` (Alpaca-style records without it are formatted with the
    Alpaca prompt, as the Hub's `tatsu-lab/alpaca` `text` column is). `purpose` ("calibration", "training" or
    "evaluation") names the text in errors and picks a Hub data set's split (training text is read as calibration
    text is, from the train split).
    """
    import datasets

    if is_local_file(source):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"Text file {source} does not exist.")
        if os.path.getsize(source) == 0:
            raise ValueError(f"The {purpose} file {source} is empty.")
        if _blank_text_file(source):
            raise ValueError(f"The {purpose} file {source} holds no text (only blank lines).")
        builder = LOCAL_FORMATS[os.path.splitext(source)[1].lower()]
        table = datasets.load_dataset(builder, data_files=source, split="train")
        rows = _text_column(table, text_column, source)
    elif os.path.exists(source):
        raise ValueError(
            f"{source} exists but is not a supported text file; use one of {sorted(LOCAL_FORMATS)} or a Hub name."
        )
    else:
        hub = HUB_SOURCES.get(source)
        split_purpose = "calibration" if purpose == "training" else purpose  # training text comes from train splits
        if hub is not None:
            if split_purpose not in hub.splits:
                raise ValueError(f"Data set {source!r} has no {purpose} split; choose one of {sorted(HUB_SOURCES)}.")
            table = datasets.load_dataset(hub.path, hub.name, split=hub.splits[split_purpose])
            if source == "alpaca":
                table = _reference_alpaca_split(table)
            rows = _text_column(table, hub.text_column, source)
        else:
            table = datasets.load_dataset(source, split="train" if split_purpose == "calibration" else "test")
            rows = _text_column(table, text_column, source)
    if not any(row.strip() for row in rows):
        raise ValueError(f"{source} holds no text.")
    return rows


def _blank_text_file(path: str) -> bool:
    """Whether a `.txt`/`.json`/`.jsonl` file holds only whitespace (read until its first other character)."""
    if LOCAL_FORMATS[os.path.splitext(path)[1].lower()] == "parquet":
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for block in iter(lambda: handle.read(1 << 16), ""):
            if block.strip():
                return False
    return True


def _reference_alpaca_split(table):
    """The reference methods calibrate on the 'test' part of a seeded 80/10/10 re-split of Alpaca's train split."""
    held_out = table.train_test_split(test_size=0.2, seed=42)["test"]
    return held_out.train_test_split(test_size=0.5, seed=42)["train"]


def _text_column(table, column: str, source: str) -> list[str]:
    names = table.column_names
    if column not in names:
        if {"instruction", "input", "output"} <= set(names):
            return [
                (ALPACA_PROMPT if row["input"] else ALPACA_PROMPT_NO_INPUT).format(**row) for row in table
            ]
        raise ValueError(f"{source} has no text column {column!r}; its columns are {names}.")
    rows = table[column]
    if not all(isinstance(row, str) for row in rows):
        bad = next(type(row).__name__ for row in rows if not isinstance(row, str))
        raise ValueError(f"Column {column!r} of {source} must hold text, but holds {bad} values.")
    return rows


def sample_rows(rows: Sequence[str], num_rows: int, rng: random.Random, source: str = "the data set") -> list[str]:
    """Pick `num_rows` distinct rows with `rng.sample` (the reference draws indices with Python's `random`)."""
    if num_rows > len(rows):
        raise ValueError(f"Asked for {num_rows} calibration rows but {source} has only {len(rows)}.")
    return [rows[i] for i in rng.sample(range(len(rows)), num_rows)]


def build_sequences(tokenizer, rows: Sequence[str], sequence_length: int, source: str = "the text") -> torch.Tensor:
    """Join `rows` with blank lines, tokenize once, cut into `[num_sequences, sequence_length]`, drop the remainder."""
    text = "\n\n".join(rows)
    input_ids = tokenizer(text, return_tensors="pt").input_ids[0]  # [num_tokens]
    num_sequences = input_ids.numel() // sequence_length
    if num_sequences == 0:
        raise ValueError(
            f"{source} gives only {input_ids.numel()} tokens, fewer than one sequence of {sequence_length}. Use more "
            "rows or a shorter `sequence_length`."
        )
    return input_ids[: num_sequences * sequence_length].view(num_sequences, sequence_length)


def build_calibration_sets(config, tokenizer, vocab_size: int) -> dict[str, torch.Tensor]:
    """The reference's two calibration sets of a `MultiPrunerConfig`, drawn from one seeded stream: width rows first,
    then block rows. `{"width": [n, seq_len], "block": [m, seq_len]}`, each only when a stage uses it."""
    rows = load_text_rows(config.calibration_dataset, "calibration", config.calibration_text_column)
    rng = random.Random(config.seed)
    sets = {}
    if {MLP_STAGE, ATTENTION_STAGE} & set(config.active_stages):
        picked = sample_rows(rows, config.num_calibration_samples_width, rng, config.calibration_dataset)
        sets["width"] = build_sequences(tokenizer, picked, config.sequence_length, "The width calibration text")
    if BLOCK_STAGE in config.active_stages:
        picked = sample_rows(rows, config.num_calibration_samples_block, rng, config.calibration_dataset)
        sets["block"] = build_sequences(tokenizer, picked, config.sequence_length, "The block calibration text")
    largest = max(int(sequences.max()) for sequences in sets.values())
    if largest >= vocab_size:
        raise ValueError(
            f"The tokenizer produced token id {largest} but the model's embedding has only {vocab_size} rows: the "
            "tokenizer does not belong to this model."
        )
    return sets
