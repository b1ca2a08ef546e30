"""Tiny random models and a local tokenizer and text, built in code (no Hub)."""

from __future__ import annotations

import json
import os
import random

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
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

# Granite's multipliers are far from 1 (embeddings x4, softmax scale 0.125 instead of 1/sqrt(16), branch outputs x0.5,
# logits / 2) so that a pruned model or a scorer that dropped one of them would give other numbers.
GRANITE_MULTIPLIERS = dict(embedding_multiplier=4.0, attention_multiplier=0.125, residual_multiplier=0.5,
                           logits_scaling=2.0)

# Gemma's sliding window (4) is shorter than the test sequences, so a layer given the wrong kind gives other numbers;
# Gemma 3 has two full-attention layers (0 and 3) among sliding ones, and RoPE bases 1e6 (full) and 1e4 (sliding).
GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4)
GEMMA3_LAYER_TYPES = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
# `num_attention_heads`, `num_key_value_heads`, `intermediate_size` of a tiny Gemma 3 without the attentions of layer 0
# (full) and layer 1 (sliding): the kept ones (sliding, full) sit in cache slots 0 and 1, whose kinds by index in
# `layer_types` would be the other way round. `PrunedStructure(*GEMMA3_MIXED_KINDS)`.
GEMMA3_MIXED_KINDS = ([0, 0, 4, 2], [0, 0, 2, 1], [256, 128, 0, 256])

CONFIGS = {
    "gemma2": lambda: Gemma2Config(**_COMMON, **GEMMA),
    "gemma3_text": lambda: Gemma3TextConfig(**_COMMON, **GEMMA, layer_types=GEMMA3_LAYER_TYPES),
    "granite": lambda: GraniteConfig(**_COMMON, **GRANITE_MULTIPLIERS),
    "llama": lambda: LlamaConfig(**_COMMON, head_dim=16),
    "mistral": lambda: MistralConfig(**_COMMON, head_dim=16, sliding_window=32),
    "olmo2": lambda: Olmo2Config(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "phi3": lambda: Phi3Config(**_COMMON),
    "smollm3": lambda: SmolLM3Config(**_COMMON),  # layer 3 has no RoPE (`no_rope_layers`)
}
FAMILIES = sorted(CONFIGS)


# OLMo 2's q/k norms average over the whole projection width: with a negligible epsilon, zeroing the removed rows and scaling
# the norm weights by sqrt(kept / dense width) makes the dense model compute exactly what the sliced one does.
EXACT_WIDTH_NORMS = {"olmo2": {"rms_norm_eps": 1e-30}}  # not 0: a removed branch's post-norm sees zeros


def zero_pruned_units(model, structure: PrunedStructure) -> None:
    """Reference: zero the o_proj columns of removed query heads and the down_proj columns of removed channels (and
    for OLMo 2, see `EXACT_WIDTH_NORMS`, the removed q/k rows, rescaling the q/k norms)."""
    from optimum_multipruner import get_adapter

    adapter = get_adapter(model)
    layout = adapter.attention_layout(model.config)
    with torch.no_grad():
        for layer, kv, width in zip(
            adapter.decoder_layers(model), structure.num_key_value_heads, structure.intermediate_size
        ):
            attention = layer.self_attn
            attention.o_proj.weight[:, kv * layout.group_width :] = 0
            layer.mlp.down_proj.weight[:, width:] = 0
            if model.config.model_type == "olmo2" and 0 < kv < layout.num_kv_heads:
                for projection, norm, kept in ((attention.q_proj, attention.q_norm, kv * layout.group_width),
                                               (attention.k_proj, attention.k_norm, kv * layout.head_dim)):
                    projection.weight[kept:] = 0
                    norm.weight *= (kept / projection.out_features) ** 0.5


def make_text(num_rows: int = 400, seed: int = 0) -> list[str]:
    """Deterministic rows of random words said twice (`w1 .. wn, w1 .. wn.`): predicting the repeat needs
    attention, so a briefly trained model uses every block."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8)))
        rows.append(f"{phrase}, {phrase}.")
    return rows


def make_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `make_text()` (ids 0-3 are special: unk, bos, eos, pad); a smaller
    `vocab_size` learns fewer merges, so the same text gets other ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
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


def model_selector(model, adapter, sequences, batch_size: int, fast_search=None, **evaluator_kwargs):
    """A `CandidateSelector` (exact, or fast with a `FastSearchConfig`) over a `ModelEvaluator` of `model` on
    `sequences`, without progress bars; `evaluator_kwargs` go to the evaluator (`accelerated`, `importance_metric`...)."""
    from optimum_multipruner.scoring import CandidateSelector, ModelEvaluator

    return CandidateSelector(ModelEvaluator(model, adapter, sequences, batch_size, **evaluator_kwargs), fast_search,
                             progress=False)


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


def train_briefly(model, tokenizer, steps: int = 120, sequence_length: int = 64, seed: int = 0, sequences=None,
                  batch_size: int = 8, lr: float = 3e-3, anneal: bool = False):
    """A few AdamW steps on `sequences` (`[n, seq_len]` token ids; default `make_text()` cut into `sequence_length`
    tokens), so every block matters (a random model's blocks are noise). `anneal`: a one-cycle learning rate (warm
    up, then down to 0, so training ends at a minimum) instead of a constant one."""
    torch.manual_seed(seed)
    if sequences is None:
        ids = tokenizer("\n\n".join(make_text(600, seed=2)), return_tensors="pt").input_ids[0]
        sequences = ids[: len(ids) // sequence_length * sequence_length].view(-1, sequence_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1) if anneal else None
    model.train()
    for step in range(steps):
        batch = sequences[torch.randint(0, len(sequences), (batch_size,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return model.eval()


def optimum_cli_console() -> str:
    """The `optimum-cli` console script of this interpreter's environment (found also when it is not on PATH)."""
    import shutil
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    return script if os.path.isfile(script) else shutil.which("optimum-cli")


def run_optimum_cli(*argv: str) -> None:
    """optimum-cli's own `main()`, in-process (the same entry point as the console script)."""
    import sys
    from unittest import mock

    from optimum.commands.optimum_cli import main

    with mock.patch.object(sys, "argv", ["optimum-cli", *argv]):
        main()


def parameter_count_by_hand(config, structure=None) -> int:
    """All parameters of a tiny model of `config` pruned to `structure` (dense when `None`), counted from the shapes
    without the package: embeddings, `lm_head` unless tied, the final norm and, per layer, the kept q/k/v/o rows
    (+ q/k/v biases for Qwen2, q/k norms over head_dim for Qwen3 and Gemma 3, over the kept width for OLMo 2),
    gate/up/down channels and the norms of each kept branch (one, two for Gemma's sandwich norms)."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    family = config.model_type.removeprefix("multipruner_")
    norms_per_branch = 2 if family in ("gemma2", "gemma3_text") else 1
    layers = range(config.num_hidden_layers)
    kept_kv = structure.num_key_value_heads if structure else [kv_heads for _ in layers]
    kept_width = structure.intermediate_size if structure else [config.intermediate_size for _ in layers]
    total = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2) + hidden
    for kv, width in zip(kept_kv, kept_width):
        if kv:
            q_rows, kv_rows = kv * heads // kv_heads * head_dim, kv * head_dim
            total += (q_rows + 2 * kv_rows) * hidden + q_rows * hidden + norms_per_branch * hidden
            total += (q_rows + 2 * kv_rows) if family == "qwen2" else 0
            total += 2 * head_dim if family in ("qwen3", "gemma3_text") else 0
            total += q_rows + kv_rows if family == "olmo2" else 0
        if width:
            total += 3 * width * hidden + norms_per_branch * hidden
    return total

MISSING_ASSET = "missing data asset"


def require_asset(path):
    """Skip the calling test when a real data asset (under `../shared/assets`) is not there; `.ci/run` turns such skips
    into failures (see `conftest.pytest_runtest_makereport`). Tests build their data in code whenever they can."""
    import pytest

    if not os.path.exists(path):
        pytest.skip(f"{MISSING_ASSET}: {path}")
    return path


def write_jsonl(path, rows) -> str:
    """`rows` as a JSON-lines file of `{"text": row}` records at `path`; returns the path as a string."""
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows), encoding="utf-8")
    return str(path)
