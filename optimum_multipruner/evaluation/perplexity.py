"""Perplexity of a causal LM on WikiText-2, PTB, C4 or a local text file, by the data set's conventional protocol.

Protocols (`PERPLEXITY_PROTOCOLS`); every one tokenizes the joined text once, cuts it into non-overlapping windows of
`sequence_length` tokens, drops the remainder and reports exp(mean over windows of the per-window mean NLL):

- `wikitext2`: the WikiText-2 raw **test** rows joined with "\\n\\n" (BlockPruner / MultiPruner; also the usual
  GPTQ / SparseGPT / Wanda protocol).
- `ptb`: the Penn Treebank **test** sentences, stripped, joined with " " (GPTQ / SparseGPT `ptb-new`).
- `c4`: the first 1100 documents of the C4 (en) **validation** split joined with " ", first 256 windows only
  (GPTQ / SparseGPT `c4-new`).

Local files use the `wikitext2` protocol unless `protocol` names another one (pass `protocol="ptb"` for a local copy of
PTB's `ptb.test.txt`, `protocol="c4"` for C4 documents).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from ..data import build_sequences, is_local_file, load_text_rows
from ..nll import perplexity, reference_ignore_index
from ..utils import get_logger
from .common import evaluation_mode

logger = get_logger(__name__)


@dataclass(frozen=True)
class PerplexityProtocol:
    """How the rows of a data set become evaluation windows."""

    separator: str  # joins the rows into one text
    strip_rows: bool = False  # strip each row first (the Hub's PTB rows are stripped lines)
    max_rows: Optional[int] = None  # keep only the first rows
    max_windows: Optional[int] = None  # keep only the first windows


PERPLEXITY_PROTOCOLS: dict[str, PerplexityProtocol] = {
    "wikitext2": PerplexityProtocol(separator="\n\n"),
    "ptb": PerplexityProtocol(separator=" ", strip_rows=True),
    "c4": PerplexityProtocol(separator=" ", max_rows=1100, max_windows=256),
}


def evaluate_perplexity(
    model: Any,
    tokenizer: Any,
    dataset: str = "wikitext2",
    sequence_length: int = 2048,
    max_windows: Optional[int] = None,
    batch_size: int = 1,
    progress: bool = True,
    protocol: Optional[str] = None,
    text_column: str = "text",
) -> dict[str, Any]:
    """Perplexity of `model` (a PyTorch causal LM or an OpenVINO `OVModelForCausalLM`) on `dataset`.

    `dataset` is `"wikitext2"`, `"ptb"` or `"c4"` (read from the Hugging Face Hub) or a local `.txt` (one row per
    line), `.json`, `.jsonl` or `.parquet` file (rows from `text_column`). `protocol` defaults to the data set's own,
    and to `"wikitext2"` for local files. `max_windows` evaluates only the first windows (for quick checks); the result
    records how many were used out of how many the protocol defines. Tokens equal to the tokenizer's EOS id are not
    scored (MultiPruner's `ignore_index`).
    """
    if sequence_length < 2:
        raise ValueError(f"`sequence_length` must be at least 2, got {sequence_length}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"`max_windows` must be at least 1 (or None for all), got {max_windows}.")
    if dataset not in PERPLEXITY_PROTOCOLS and not is_local_file(dataset):
        raise ValueError(
            f"Unknown perplexity data set {dataset!r}: use one of {sorted(PERPLEXITY_PROTOCOLS)} or a local "
            ".txt/.json/.jsonl/.parquet file."
        )
    protocol_name = protocol or (dataset if dataset in PERPLEXITY_PROTOCOLS else "wikitext2")
    if protocol_name not in PERPLEXITY_PROTOCOLS:
        raise ValueError(
            f"Unknown perplexity protocol {protocol_name!r}; choose one of {sorted(PERPLEXITY_PROTOCOLS)}."
        )
    rules = PERPLEXITY_PROTOCOLS[protocol_name]

    rows = load_text_rows(dataset, purpose="evaluation", text_column=text_column)
    if rules.strip_rows:
        rows = [row.strip() for row in rows]
    rows = rows[: rules.max_rows]
    # One row holding the joined text: `build_sequences` joins rows with "\n\n", so a single row passes through as is.
    windows = build_sequences(tokenizer, [rules.separator.join(rows)], sequence_length, source=dataset)
    num_available = min(len(windows), rules.max_windows or len(windows))
    num_windows = min(num_available, max_windows or num_available)
    ignore_index = reference_ignore_index(tokenizer)
    logger.info(
        "Perplexity on %s (%s protocol): %d of %d windows of %d tokens.",
        dataset,
        protocol_name,
        num_windows,
        num_available,
        sequence_length,
    )

    start = time.perf_counter()
    with evaluation_mode(model):
        value = perplexity(
            model,
            windows[:num_windows],
            batch_size=batch_size,
            ignore_index=ignore_index,
            progress=progress,
            description=f"perplexity {protocol_name}",
        )
    seconds = time.perf_counter() - start
    logger.info("Perplexity on %s: %.4f (%.1f s).", dataset, value, seconds)
    return {
        "kind": "perplexity",
        "dataset": dataset,
        "protocol": protocol_name,
        "perplexity": value,
        "sequence_length": sequence_length,
        "num_windows": num_windows,
        "num_windows_available": num_available,
        "batch_size": batch_size,
        "ignore_index": ignore_index,
        "seconds": seconds,
    }
