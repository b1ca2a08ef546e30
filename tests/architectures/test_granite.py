"""Granite: pruned models and the search keep its embedding, attention, residual and logits multipliers.

The family-wide tests (surgery, modeling, OpenVINO parity) run Granite through `FAMILIES`; these check what only
Granite has, on the tiny config of `testing_utils` whose multipliers are far from 1.
"""

import pytest
import torch
from testing_utils import GRANITE_MULTIPLIERS, make_model, make_pruned_model, model_selector, search_config
from transformers import AutoModelForCausalLM

import optimum_multipruner  # noqa: F401  (registers the pruned model types)
from optimum_multipruner import MultiPruner
from optimum_multipruner.architectures import get_adapter
from optimum_multipruner.data import build_sequences, load_text_rows
from optimum_multipruner.structure import PrunedStructure

INPUT = torch.randint(4, 320, (2, 16), generator=torch.Generator().manual_seed(0))


def test_a_saved_pruned_model_keeps_the_multipliers(tmp_path):
    """The pruned config class carries Granite's multipliers through `save_pretrained` / `from_pretrained` (a config
    that fell back to its defaults, 1.0 and `head_dim ** -0.5`, would give other logits)."""
    model = make_pruned_model("granite", PrunedStructure([2, 4, 4, 4], [1, 2, 2, 2], [128, 256, 256, 256]))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for name, value in GRANITE_MULTIPLIERS.items():
        assert getattr(reloaded.config, name) == value, name
    with torch.no_grad():
        assert torch.equal(reloaded(INPUT).logits, model(INPUT).logits)


def test_a_model_without_blocks_still_scales_embeddings_and_logits():
    """Every branch removed: each layer adds `residual_multiplier * 0`, so the logits are those of the scaled
    embeddings through the final norm and the head, divided by `logits_scaling`."""
    empty = PrunedStructure([0] * 4, [0] * 4, [0] * 4)
    model = make_pruned_model("granite", empty)
    config = model.config
    with torch.no_grad():
        hidden = model.model.embed_tokens(INPUT) * config.embedding_multiplier
        expected = model.lm_head(model.model.norm(hidden)) / config.logits_scaling
        torch.testing.assert_close(model(INPUT).logits, expected, rtol=0, atol=0)
    assert (config.embedding_multiplier, config.residual_multiplier, config.logits_scaling) == (4.0, 0.5, 2.0)


def test_pruned_branches_keep_the_residual_and_attention_multipliers():
    """A pruned layer equals the dense layer with the same units zeroed, and its attention keeps the softmax scale."""
    structure = PrunedStructure([2, 4, 4, 4], [1, 2, 2, 2], [128, 256, 256, 256])
    pruned, dense = make_pruned_model("granite", structure), make_model("granite")
    with torch.no_grad():
        dense.model.layers[0].self_attn.o_proj.weight[:, 32:] = 0  # the second KV group's query channels
        dense.model.layers[0].mlp.down_proj.weight[:, 128:] = 0
        torch.testing.assert_close(pruned(INPUT).logits, dense(INPUT).logits, atol=1e-5, rtol=1e-5)
    assert pruned.model.layers[0].self_attn.scaling == GRANITE_MULTIPLIERS["attention_multiplier"]
    assert pruned.model.layers[0].residual_multiplier == GRANITE_MULTIPLIERS["residual_multiplier"]


def test_the_scorer_head_divides_by_logits_scaling(tokenizer, calibration_file):
    """The accelerated scorer computes the head from cached hidden states: it must match the model's forward."""
    model = make_model("granite")
    adapter = get_adapter(model)
    sequences = build_sequences(tokenizer, load_text_rows(calibration_file)[:100], 64)
    fast = model_selector(model, adapter, sequences, 4, accelerated=True)
    plain = model_selector(model, adapter, sequences, 4, accelerated=False)
    assert fast.base_total == pytest.approx(plain.base_total, rel=1e-6)
    llama_head = model_selector(model, get_adapter("llama"), sequences, 4, accelerated=True)
    assert llama_head.base_total != pytest.approx(plain.base_total, rel=1e-3)  # the test can fail


def test_accelerated_search_makes_the_same_choices_as_plain(tokenizer, calibration_file):
    records = {}
    for accelerated in (False, True):
        pruner = MultiPruner(make_model("granite"), tokenizer)
        config = search_config(calibration_file, accelerated_search=accelerated, pruning_distribution=(10, 45, 45),
                               target_ratio=0.15, num_calibration_samples_block=40, num_calibration_samples_width=20)
        pruner.prune(config, progress=False)
        records[accelerated] = pruner.record
    plain, fast = records[False], records[True]
    assert [(s.action, s.layer) for s in fast.steps] == [(s.action, s.layer) for s in plain.steps]
    assert [s.perplexity for s in fast.steps] == pytest.approx([s.perplexity for s in plain.steps], rel=1e-6)
    assert {s.stage for s in fast.steps} == {"block", "mlp", "attention"}
