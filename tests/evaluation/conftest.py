"""Shared fixtures: evaluation data written in code (and, for a few checks, the real data assets), a tiny byte-level
BPE tokenizer and a tiny random Llama (from `testing_utils.make_model`, the tests' one model factory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from built_data import wiki_rows, write_jsonl, write_task_data
from testing_utils import make_model, require_asset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

# The shared folder of real data sets (layout in its README); the zero-shot task data directory has the same layout.
ASSETS_DIR = Path(os.environ.get("MULTIPRUNER_ASSETS", Path(__file__).resolve().parents[3] / "shared" / "assets"))
TINY_VOCAB_SIZE = 384


@pytest.fixture(scope="session")
def built_task_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task data directory written in code."""
    return write_task_data(tmp_path_factory.mktemp("task_data"))


@pytest.fixture(scope="session", params=["built", "assets"])
def task_data(request: pytest.FixtureRequest, built_task_data: Path) -> Path:
    """The task data written in code, then the real assets (a missing asset skips, and fails under `.ci/run`)."""
    if request.param == "built":
        return built_task_data
    for task in ("piqa/valid.jsonl", "llm-foundry-icl/winogrande.jsonl", "hellaswag/hellaswag_val_subset1000.jsonl",
                 "llm-foundry-icl/arc_easy.jsonl", "llm-foundry-icl/arc_challenge.jsonl"):
        require_asset(ASSETS_DIR / task)
    return ASSETS_DIR


@pytest.fixture(scope="session")
def wikitext_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 WikiText-2-like rows as `{"text"}` records."""
    return write_jsonl(tmp_path_factory.mktemp("wikitext") / "test.jsonl", [{"text": row} for row in wiki_rows(400)])


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (like GPT-2's, no BOS added) trained on WikiText-like rows."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(wiki_rows(300, seed=1), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_llama() -> LlamaForCausalLM:
    """A tiny random Llama (seeded; `testing_utils.make_model`) with `tiny_tokenizer`'s vocabulary and room for long
    windows; tests must leave it unchanged."""
    return make_model("llama", vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=1024, pad_token_id=None)


@pytest.fixture(scope="session")
def tiny_openvino_llama(tiny_llama: LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory):
    """`tiny_llama` exported to an OpenVINO `OVModelForCausalLM`, run in f32 so it matches PyTorch closely."""
    optimum_intel = pytest.importorskip("optimum.intel")
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(folder)
    return optimum_intel.OVModelForCausalLM.from_pretrained(
        folder, export=True, ov_config={"INFERENCE_PRECISION_HINT": "f32"}
    )
