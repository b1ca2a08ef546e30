"""Shared fixtures: the local data assets, a tiny byte-level BPE tokenizer and tiny random Llama models."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# The shared folder of real data sets (layout in its README); the zero-shot task data directory has the same layout.
ASSETS_DIR = Path(os.environ.get("MULTIPRUNER_ASSETS", Path(__file__).resolve().parents[3] / "shared" / "assets"))
WIKITEXT_TEST_JSONL = ASSETS_DIR / "wikitext-2-raw-v1" / "test.jsonl"
TINY_VOCAB_SIZE = 384


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run these tests' tiny models on one thread: faster for such small matrices, and robust on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    if not WIKITEXT_TEST_JSONL.is_file():
        pytest.skip(f"The local data assets are not at {ASSETS_DIR} (set MULTIPRUNER_ASSETS).")
    return ASSETS_DIR


@pytest.fixture(scope="session")
def tiny_tokenizer(assets_dir: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (like GPT-2's, no BOS added) trained on 300 lines of the WikiText-2 test set."""
    with WIKITEXT_TEST_JSONL.open(encoding="utf-8") as handle:
        lines = [json.loads(line)["text"] for _, line in zip(range(300), handle)]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer GQA Llama config small enough for CPU tests."""
    settings = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=TINY_VOCAB_SIZE,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    """A tiny random Llama (seeded); tests must leave it unchanged."""
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def tiny_openvino_llama(tiny_llama: LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory):
    """`tiny_llama` exported to an OpenVINO `OVModelForCausalLM`, run in f32 so it matches PyTorch closely."""
    optimum_intel = pytest.importorskip("optimum.intel")
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(folder)
    return optimum_intel.OVModelForCausalLM.from_pretrained(
        folder, export=True, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
