"""Teacher-generated training text: real-text prefixes continued by the dense model, written as a JSON-lines file.

    generate_teacher_text(teacher, tokenizer, "teacher_c4.jsonl", num_sequences=1024, new_tokens=480,
                          prompts="c4_train.jsonl", prefix_tokens=32, temperature=0.7)

The file is a training source like any other (`RecoveryConfig.dataset`, alone or mixed with real text). Generation is
seeded per batch and resumable: rows are appended to `<file>.partial` one batch at a time, a restart continues after
the last complete batch, and the finished file is renamed into place with a manifest (`<file>.manifest.json`: the
settings, the teacher's fingerprint and the file's SHA-256) that a later call with the same settings reuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import load_text_rows
from ..resume_state import state_dict_hash
from ..utils import atomic_write_text, get_logger, read_json

logger = get_logger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"


def generate_teacher_text(teacher: nn.Module, tokenizer, output_file: Union[str, os.PathLike], num_sequences: int,
                          new_tokens: int, prompts: Optional[str] = None, prefix_tokens: int = 32,
                          temperature: float = 0.7, top_p: float = 0.95, seed: int = 0, batch_size: int = 8,
                          text_column: str = "text", progress: bool = True) -> str:
    """Write `num_sequences` rows `{"text": prefix + continuation}` to `output_file` and return its path.

    Each prefix is the first `prefix_tokens` tokens of a document of `prompts` (a training text source, documents in
    `random.Random(seed)` order, shorter ones skipped); without `prompts`, a prefix is one token drawn uniformly from
    the vocabulary (plain sampling from the teacher). The teacher continues it by `new_tokens` sampled tokens
    (`temperature`, nucleus `top_p`), stopping early at EOS. Batch `b` samples under `torch.manual_seed(seed + b)`, so
    the text does not depend on where a run was interrupted.
    """
    output_file = os.fspath(output_file)
    for name, value in (("num_sequences", num_sequences), ("new_tokens", new_tokens), ("batch_size", batch_size),
                        ("prefix_tokens", prefix_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ValueError(f"`temperature` must be > 0 and `top_p` in (0, 1], got {temperature!r} and {top_p!r}.")
    settings = {"num_sequences": num_sequences, "new_tokens": new_tokens, "prompts": prompts,
                "prefix_tokens": prefix_tokens if prompts else 1, "temperature": temperature, "top_p": top_p,
                "seed": seed, "batch_size": batch_size, "teacher_sha256": state_dict_hash(teacher)}
    manifest_file = output_file + MANIFEST_SUFFIX
    if os.path.exists(output_file):
        manifest = read_json(manifest_file) if os.path.isfile(manifest_file) else {}
        if manifest.get("settings") == settings and manifest.get("sha256") == file_sha256(output_file):
            logger.info("Teacher text %s is already generated with these settings; reusing it.", output_file)
            return output_file
        raise FileExistsError(f"{output_file} exists and was not generated with these settings (or was changed "
                              "since); choose another file or remove it.")
    prefixes = _prefixes(tokenizer, prompts, num_sequences, prefix_tokens, seed, text_column,
                         teacher.get_input_embeddings().num_embeddings)
    partial = output_file + PARTIAL_SUFFIX
    done = _complete_rows(partial, settings)
    teacher.eval()
    device = next(teacher.parameters()).device
    bar = tqdm(total=num_sequences, initial=done, unit="seq", desc="teacher text", disable=not progress)
    with open(partial, "a", encoding="utf-8") as handle:
        if done == 0:
            handle.write(json.dumps({"settings": settings}) + "\n")
            handle.flush()
        for start in range(done, num_sequences, batch_size):
            batch = torch.tensor(prefixes[start:start + batch_size], dtype=torch.long, device=device)
            torch.manual_seed(seed + start // batch_size)
            with torch.no_grad():
                output = teacher.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                          temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=new_tokens,
                                          min_new_tokens=1, pad_token_id=tokenizer.eos_token_id,
                                          eos_token_id=tokenizer.eos_token_id)
            for row in output.tolist():
                if tokenizer.eos_token_id in row[batch.shape[1]:]:
                    row = row[: batch.shape[1] + row[batch.shape[1]:].index(tokenizer.eos_token_id)]
                handle.write(json.dumps({"text": tokenizer.decode(row, skip_special_tokens=False)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    rows = open(partial, encoding="utf-8").read().splitlines()[1:]
    atomic_write_text(output_file, "".join(row + "\n" for row in rows))
    atomic_write_text(manifest_file, json.dumps({"settings": settings, "sha256": file_sha256(output_file)},
                                                indent=2) + "\n")
    os.remove(partial)
    return output_file


def file_sha256(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prefixes(tokenizer, prompts: Optional[str], count: int, prefix_tokens: int, seed: int, text_column: str,
              vocab_size: int) -> list[list[int]]:
    if prompts is None:
        rng = random.Random(seed)
        return [[rng.randrange(vocab_size)] for _ in range(count)]
    rows = [row for row in load_text_rows(prompts, "training", text_column) if row.strip()]
    prefixes = []
    for index in random.Random(seed).sample(range(len(rows)), len(rows)):
        ids = tokenizer(rows[index], add_special_tokens=False).input_ids
        if len(ids) >= prefix_tokens:
            prefixes.append(ids[:prefix_tokens])
            if len(prefixes) == count:
                return prefixes
    raise ValueError(f"{prompts} has only {len(prefixes)} documents of at least {prefix_tokens} tokens; "
                     f"{count} prefixes are needed.")


def _complete_rows(partial: str, settings: dict[str, Any]) -> int:
    """Rows of an interrupted generation with these settings (whole batches only; a torn last line is cut)."""
    if not os.path.isfile(partial):
        return 0
    lines = open(partial, encoding="utf-8").read().split("\n")
    if len(lines) == 1:  # killed before its header line was whole: nothing was generated yet
        os.remove(partial)
        return 0
    try:
        header = json.loads(lines[0])["settings"]
    except (ValueError, KeyError, TypeError):
        header = None
    if header != settings:
        raise FileExistsError(f"{partial} holds an interrupted generation with other settings; remove it to start "
                              "over.")
    rows = lines[1:-1]  # the text after the last newline is torn or empty
    whole = min(len(rows), settings["num_sequences"])
    if whole < settings["num_sequences"]:
        whole -= whole % settings["batch_size"]
    atomic_write_text(partial, "\n".join([lines[0], *rows[:whole]]) + "\n")
    return whole
