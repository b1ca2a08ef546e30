"""Physical surgery equals the dense model with the same units zeroed."""

import pytest
import torch
from testing_utils import FAMILIES, make_model

from optimum_multipruner.architectures import get_adapter
from optimum_multipruner.surgery import (
    PrunedStructure,
    ZeroAttention,
    ZeroMLP,
    apply_structure,
    count_parameters,
    dense_parameter_count,
    read_structure,
    reorder_by_weight_magnitude,
)

INPUT = torch.randint(4, 320, (2, 24), generator=torch.Generator().manual_seed(0))
# layer 0 without attention, layer 1 without MLP, mixed KV groups and widths
STRUCTURE = PrunedStructure(
    num_attention_heads=[0, 2, 4, 2], num_key_value_heads=[0, 1, 2, 1], intermediate_size=[64, 0, 256, 128]
)


def zero_pruned_units(model, structure: PrunedStructure) -> None:
    """Reference: zero the o_proj columns of removed query heads and the down_proj columns of removed channels."""
    adapter = get_adapter(model)
    layout = adapter.attention_layout(model.config)
    with torch.no_grad():
        for layer, kv, width in zip(
            adapter.decoder_layers(model), structure.num_key_value_heads, structure.intermediate_size
        ):
            layer.self_attn.o_proj.weight[:, kv * layout.group_width :] = 0
            layer.mlp.down_proj.weight[:, width:] = 0


def logits(model, input_ids=INPUT):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_zero_units_is_identity(family):
    model = make_model(family)
    expected = logits(model)
    adapter = get_adapter(model)
    apply_structure(model, adapter, PrunedStructure.dense(model.config, adapter))
    assert torch.equal(logits(model), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_reordering_preserves_function(family):
    model = make_model(family)
    expected = logits(model)
    reorder_by_weight_magnitude(model, get_adapter(model))
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_equals_zeroed_dense_model(family, attn_implementation):
    reference = make_model(family, attn_implementation=attn_implementation)
    zero_pruned_units(reference, STRUCTURE)
    pruned = make_model(family, attn_implementation=attn_implementation)
    apply_structure(pruned, get_adapter(pruned), STRUCTURE)
    torch.testing.assert_close(logits(pruned), logits(reference), atol=1e-5, rtol=1e-5)
    assert read_structure(pruned, get_adapter(pruned)) == STRUCTURE


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_block_equals_skipping_it(family):
    model = make_model(family)
    adapter = get_adapter(model)
    layer = adapter.decoder_layers(model)[2]
    hidden = torch.randn(2, 8, model.config.hidden_size)
    structure = read_structure(model, adapter)
    structure.num_attention_heads[2] = structure.num_key_value_heads[2] = 0
    apply_structure(model, adapter, structure)
    assert isinstance(layer.self_attn, ZeroAttention)
    position_embeddings = model.model.rotary_emb(hidden, torch.arange(8)[None])
    with torch.no_grad():
        out = layer(hidden, position_embeddings=position_embeddings)
        expected = hidden + layer.mlp(layer.post_attention_layernorm(hidden))  # attention branch skipped
    torch.testing.assert_close(out, expected)
    assert not any("input_layernorm" in name for name, _ in layer.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_structure(family):
    model = make_model(family)
    adapter = get_adapter(model)
    dense = count_parameters(model)
    assert dense_parameter_count(model.config, adapter) == dense
    apply_structure(model, adapter, STRUCTURE)
    layout = adapter.attention_layout(model.config)
    hidden, head_dim = model.config.hidden_size, layout.head_dim
    removed = 0
    for kv, width in zip(STRUCTURE.num_key_value_heads, STRUCTURE.intermediate_size):
        lost_kv = layout.num_kv_heads - kv
        removed += 2 * lost_kv * layout.heads_per_group * head_dim * hidden + 2 * lost_kv * head_dim * hidden
        if model.config.model_type == "qwen2":  # q/k/v biases
            removed += lost_kv * layout.heads_per_group * head_dim + 2 * lost_kv * head_dim
        if model.config.model_type == "qwen3" and kv == 0:  # q/k norms go with the attention
            removed += 2 * head_dim
        removed += 3 * (model.config.intermediate_size - width) * hidden
        removed += hidden * ((kv == 0) + (width == 0))  # the removed blocks' pre-norms
    assert count_parameters(model) == dense - removed


def test_structure_that_does_not_fit_is_rejected_before_any_change():
    model = make_model("llama")
    adapter = get_adapter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = PrunedStructure([4, 4, 4, 3], [2, 2, 2, 1], [256, 256, 256, 256])  # 3 heads is not whole KV groups
    with pytest.raises(ValueError, match="Layer 3"):
        apply_structure(model, adapter, bad)
    too_wide = PrunedStructure([4] * 4, [2] * 4, [256, 256, 512, 256])
    with pytest.raises(ValueError, match="Layer 2"):
        apply_structure(model, adapter, too_wide)
    with pytest.raises(ValueError, match="5 layers"):
        apply_structure(model, adapter, PrunedStructure([4] * 5, [2] * 5, [256] * 5))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not isinstance(adapter.decoder_layers(model)[0].mlp, ZeroMLP)
