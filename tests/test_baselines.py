"""Whole-layer removal by block influence (ShortGPT)."""

import pytest
import torch
from testing_utils import FAMILIES, make_model, parameter_count_by_hand
from transformers import AutoModelForCausalLM

from optimum_multipruner import MultiPruner, PruningRecord
from optimum_multipruner.architectures import get_adapter
from optimum_multipruner.baselines import block_influence, prune_layers_by_block_influence
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import count_parameters, read_structure

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
    dense = parameter_count_by_hand(model.config)
    without_layer_0 = PrunedStructure([0, 4, 4, 4], [0, 2, 2, 2], [0, 256, 256, 256])
    one_layer = dense - parameter_count_by_hand(model.config, without_layer_0)
    assert one_layer / dense < 0.3 <= 2 * one_layer / dense  # so two whole layers reach 30 %, one does not
    pruned, info = prune_layers_by_block_influence(model, SEQUENCES, 0.3)
    assert info["target_reached"] and len(info["removed_layers"]) == 2
    assert count_parameters(pruned) == dense - 2 * one_layer
    assert info["ratio"] == pytest.approx(2 * one_layer / dense, abs=1e-12)
    structure = read_structure(pruned, get_adapter(pruned))
    removed = sorted(info["removed_layers"])
    assert [i for i, width in enumerate(structure.intermediate_size) if width == 0] == removed
    assert [i for i, kv in enumerate(structure.num_key_value_heads) if kv == 0] == removed


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


@pytest.mark.parametrize("family", FAMILIES)
def test_record_rebuilds_the_model(family, tmp_path):
    pruned, info = prune_layers_by_block_influence(make_model(family), SEQUENCES, 0.3)
    PruningRecord.from_dict(info["record"]).save(tmp_path)
    record = PruningRecord.load(tmp_path)
    assert [(step.action, step.layer) for step in record.steps] == [
        (action, layer) for layer in info["removed_layers"] for action in ("remove_attention", "remove_mlp")
    ]
    assert record.steps[-1].num_parameters == count_parameters(pruned) and not record.weight_reorder
    rebuilt = MultiPruner(make_model(family)).apply(record)
    assert rebuilt.config.pruning == pruned.config.pruning
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=SEQUENCES).logits, pruned(input_ids=SEQUENCES).logits)
