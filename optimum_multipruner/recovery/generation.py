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
IR_MODEL = "openvino_model.xml"


def generate_teacher_text(teacher: Union[nn.Module, str, os.PathLike], tokenizer, output_file: Union[str, os.PathLike],
                          num_sequences: int, new_tokens: int, prompts: Optional[str] = None, prefix_tokens: int = 32,
                          temperature: float = 0.7, top_p: float = 0.95, seed: int = 0, batch_size: int = 8,
                          text_column: str = "text", progress: bool = True, device: str = "CPU") -> str:
    """Write `num_sequences` rows `{"text": prefix + continuation}` to `output_file` and return its path.

    `teacher` is the dense model: a PyTorch module (sampled with `generate`), or the folder of its OpenVINO IR
    (sampled by openvino-genai's `LLMPipeline` on `device`, the faster engine on Intel CPUs and GPUs; the IR needs no
    tokenizer models). Each prefix is the first `prefix_tokens` tokens of a document of `prompts` (a training text
    source, documents in `random.Random(seed)` order, shorter ones skipped); without `prompts`, a prefix is one token
    drawn uniformly from the vocabulary (plain sampling from the teacher). The teacher continues it by `new_tokens`
    sampled tokens (`temperature`, nucleus `top_p`), stopping early at EOS. Batch `b` samples with seed `seed + b`, so
    the text does not depend on where a run was interrupted.
    """
    output_file = os.fspath(output_file)
    for name, value in (("num_sequences", num_sequences), ("new_tokens", new_tokens), ("batch_size", batch_size),
                        ("prefix_tokens", prefix_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ValueError(f"`temperature` must be > 0 and `top_p` in (0, 1], got {temperature!r} and {top_p!r}.")
    engine = _TorchSampler(teacher, tokenizer) if isinstance(teacher, nn.Module) else _GenaiSampler(teacher, device)
    settings = {"num_sequences": num_sequences, "new_tokens": new_tokens, "prompts": prompts,
                "prefix_tokens": prefix_tokens if prompts else 1, "temperature": temperature, "top_p": top_p,
                "seed": seed, "batch_size": batch_size, "teacher_sha256": engine.fingerprint(), **engine.settings}
    manifest_file = output_file + MANIFEST_SUFFIX
    if os.path.exists(output_file):
        manifest = read_json(manifest_file) if os.path.isfile(manifest_file) else {}
        if manifest.get("settings") == settings and manifest.get("sha256") == file_sha256(output_file):
            logger.info("Teacher text %s is already generated with these settings; reusing it.", output_file)
            return output_file
        raise FileExistsError(f"{output_file} exists and was not generated with these settings (or was changed "
                              "since); choose another file or remove it.")
    prefixes = _prefixes(tokenizer, prompts, num_sequences, prefix_tokens, seed, text_column, engine.vocab_size)
    partial = output_file + PARTIAL_SUFFIX
    done = _complete_rows(partial, settings)
    bar = tqdm(total=num_sequences, initial=done, unit="seq", desc="teacher text", disable=not progress)
    with open(partial, "a", encoding="utf-8") as handle:
        if done == 0:
            handle.write(json.dumps({"settings": settings}) + "\n")
            handle.flush()
        for start in range(done, num_sequences, batch_size):
            batch = prefixes[start:start + batch_size]
            continuations = engine.sample(batch, seed + start // batch_size, new_tokens, temperature, top_p,
                                          tokenizer.eos_token_id)
            for prefix, continuation in zip(batch, continuations):
                if tokenizer.eos_token_id in continuation:
                    continuation = continuation[: continuation.index(tokenizer.eos_token_id)]
                handle.write(json.dumps({"text": tokenizer.decode(prefix + continuation, skip_special_tokens=False)})
                             + "\n")
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


class _TorchSampler:
    """Sampling with the PyTorch teacher's `generate` (prefixes of one batch have one length)."""

    settings: dict[str, Any] = {}  # the manifests of PyTorch-generated files predate engines: nothing added

    def __init__(self, teacher: nn.Module, tokenizer) -> None:
        self.teacher, self.pad_token_id = teacher.eval(), tokenizer.eos_token_id
        self.vocab_size = teacher.get_input_embeddings().num_embeddings

    def fingerprint(self) -> str:
        return state_dict_hash(self.teacher)

    def sample(self, prefixes: list[list[int]], seed: int, new_tokens: int, temperature: float, top_p: float,
               eos_token_id: Optional[int]) -> list[list[int]]:
        batch = torch.tensor(prefixes, dtype=torch.long, device=next(self.teacher.parameters()).device)
        torch.manual_seed(seed)
        with torch.no_grad():
            output = self.teacher.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                           temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=new_tokens,
                                           min_new_tokens=1, pad_token_id=self.pad_token_id,
                                           eos_token_id=eos_token_id)
        return [row[batch.shape[1]:] for row in output.tolist()]


class _GenaiSampler:
    """Sampling with openvino-genai's `LLMPipeline` over the teacher's IR folder (seeded by `rng_seed`)."""

    def __init__(self, ir_folder: Union[str, os.PathLike], device: str) -> None:
        self.folder = os.fspath(ir_folder)
        if not os.path.isfile(os.path.join(self.folder, IR_MODEL)):
            raise ValueError(f"The teacher must be a PyTorch model or an OpenVINO IR folder; {self.folder} has no "
                             f"{IR_MODEL}.")
        self.device, self.pipeline = device, None  # compiled on the first batch: a reused file needs none
        self.vocab_size = read_json(os.path.join(self.folder, "config.json"))["vocab_size"]
        self.settings = {"engine": "openvino-genai"}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in (IR_MODEL, IR_MODEL.replace(".xml", ".bin")):
            digest.update(file_sha256(os.path.join(self.folder, name)).encode())
        return digest.hexdigest()

    def sample(self, prefixes: list[list[int]], seed: int, new_tokens: int, temperature: float, top_p: float,
               eos_token_id: Optional[int]) -> list[list[int]]:
        import numpy as np
        import openvino as ov
        import openvino_genai

        if self.pipeline is None:
            self.pipeline = openvino_genai.LLMPipeline(self.folder, self.device)
        config = openvino_genai.GenerationConfig()
        config.do_sample, config.temperature, config.top_p = True, temperature, top_p
        config.max_new_tokens, config.min_new_tokens, config.rng_seed = new_tokens, 1, seed
        if eos_token_id is not None:
            config.eos_token_id = eos_token_id
        ids = np.array(prefixes, dtype=np.int64)  # [batch, prefix_tokens]
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        return [list(row) for row in self.pipeline.generate(inputs, config).tokens]


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
