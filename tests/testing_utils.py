"""Tiny random models and a local tokenizer and text, built in code (no Hub)."""

from __future__ import annotations

import random

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB_SIZE = 320
WORDS = (
    "the a model layer prunes heads channels of in and to small fast block attention network weights data text "
    "token learns runs is was on with for by at from every each some many quiet bright river stone light open"
).split()

_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON, head_dim=16),
    "mistral": lambda: MistralConfig(**_COMMON, head_dim=16, sliding_window=32),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "phi3": lambda: Phi3Config(**_COMMON),
}
FAMILIES = sorted(CONFIGS)


def make_text(num_rows: int = 400, seed: int = 0) -> list[str]:
    """Deterministic rows of random words said twice (`w1 .. wn, w1 .. wn.`): predicting the repeat needs
    attention, so a briefly trained model uses every block."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8)))
        rows.append(f"{phrase}, {phrase}.")
    return rows


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `make_text()` (ids 0-3 are special: unk, bos, eos, pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(make_text(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_model(family: str, seed: int = 0, attn_implementation: str = "eager", **overrides):
    """A tiny random model of `family` in eval mode."""
    config = CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def make_pruned_model(family: str, structure, seed: int = 0, attn_implementation: str = "eager"):
    """A tiny random model of `family` physically pruned to `structure` (a `PrunedStructure`)."""
    from optimum_multipruner import get_adapter
    from optimum_multipruner.modeling import to_pruned_model
    from optimum_multipruner.surgery import apply_structure

    model = make_model(family, seed=seed, attn_implementation=attn_implementation)
    adapter = get_adapter(model)
    apply_structure(model, adapter, structure)
    return to_pruned_model(model, adapter, structure)


def save_checkpoint(path, tokenizer, family: str = "llama", seed: int = 0) -> str:
    """A tiny random model of `family` and `tokenizer` saved to `path`; returns the path as a string."""
    make_model(family, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def search_config(calibration_file: str, **overrides):
    """A `MultiPrunerConfig` for a small search on the tiny models, running in seconds; `overrides` replace fields."""
    from optimum_multipruner import MultiPrunerConfig

    values = dict(
        target_ratio=0.3,
        mlp_channel_group_size=64,
        width_alignment=32,
        calibration_dataset=calibration_file,
        num_calibration_samples_block=120,
        num_calibration_samples_width=60,
        sequence_length=64,
        batch_size=4,
    )
    values.update(overrides)
    return MultiPrunerConfig(**values)


def train_briefly(model, tokenizer, steps: int = 120, sequence_length: int = 64, seed: int = 0):
    """A few AdamW steps on `make_text()` so every block matters (a random model's blocks are noise)."""
    torch.manual_seed(seed)
    ids = tokenizer("\n\n".join(make_text(600, seed=2)), return_tensors="pt").input_ids[0]
    sequences = ids[: len(ids) // sequence_length * sequence_length].view(-1, sequence_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = sequences[torch.randint(0, len(sequences), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def run_optimum_cli(*argv: str) -> None:
    """optimum-cli's own `main()`, in-process (the same entry point as the console script)."""
    import sys
    from unittest import mock

    from optimum.commands.optimum_cli import main

    with mock.patch.object(sys, "argv", ["optimum-cli", *argv]):
        main()
