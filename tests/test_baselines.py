"""Whole-layer removal by block influence (ShortGPT)."""

import pytest
import torch
from testing_utils import FAMILIES, make_model
from transformers import AutoModelForCausalLM

from optimum_multipruner.architectures import get_adapter
from optimum_multipruner.baselines import block_influence, prune_layers_by_block_influence
from optimum_multipruner.surgery import count_parameters, dense_parameter_count, read_structure

SEQUENCES = torch.randint(4, 320, (3, 16), generator=torch.Generator().manual_seed(0))


def make_identity_layer(model, index: int) -> None:
    """Zero the layer's o_proj and down_proj, so it adds nothing to the residual stream."""
    layer = get_adapter(model).decoder_layers(model)[index]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_layer_has_zero_influence_and_goes_first(family):
    model = make_model(family)
    make_identity_layer(model, 2)
    influence = block_influence(model, SEQUENCES)
    assert abs(influence[2]) < 1e-6
    assert min(influence[i] for i in (0, 1, 3)) > 1e-4
    _, info = prune_layers_by_block_influence(model, SEQUENCES, 0.05)
    assert info["removed_layers"][0] == 2
    assert info["block_influence"] == influence


def test_ratio_is_reached_by_whole_layers():
    model = make_model("llama")
    adapter = get_adapter(model)
    pruned, info = prune_layers_by_block_influence(model, SEQUENCES, 0.3)
    ratio = 1 - count_parameters(pruned) / dense_parameter_count(pruned.config, adapter)
    assert info["target_reached"] and ratio == pytest.approx(info["ratio"]) and ratio >= 0.3
    structure = read_structure(pruned, adapter)
    removed = sorted(info["removed_layers"])
    assert [i for i, width in enumerate(structure.intermediate_size) if width == 0] == removed
    assert [i for i, kv in enumerate(structure.num_key_value_heads) if kv == 0] == removed
    # one layer fewer would not have been enough
    assert 1 - (count_parameters(pruned) + count_parameters(make_model("llama").model.layers[0])) / (
        dense_parameter_count(pruned.config, adapter)
    ) < 0.3


def test_unreachable_target_keeps_one_layer():
    _, info = prune_layers_by_block_influence(make_model("llama"), SEQUENCES, 0.99)
    assert not info["target_reached"] and len(info["removed_layers"]) == 3


def test_pruned_model_reloads(tmp_path):
    pruned, _ = prune_layers_by_block_influence(make_model("llama"), SEQUENCES, 0.3)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(pruned)
    assert reloaded.config.pruning == pruned.config.pruning
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=SEQUENCES).logits, pruned(input_ids=SEQUENCES).logits)


def test_refuses_a_pruned_model():
    pruned, _ = prune_layers_by_block_influence(make_model("llama"), SEQUENCES, 0.3)
    with pytest.raises(ValueError, match="already pruned"):
        prune_layers_by_block_influence(pruned, SEQUENCES, 0.3)
    with pytest.raises(ValueError, match="target_ratio"):
        prune_layers_by_block_influence(make_model("llama"), SEQUENCES, 1.0)
