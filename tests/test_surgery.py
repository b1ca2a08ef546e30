"""Physical surgery equals the dense model with the same units zeroed."""

import copy
from inspect import signature

import pytest
import torch
from testing_utils import EXACT_WIDTH_NORMS, FAMILIES, make_model, parameter_count_by_hand, zero_pruned_units

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


def projections(layer, config) -> dict[str, torch.Tensor]:
    """By hand, per family: the q, k, v rows `[out, hidden]` of the attention and the gate, up rows
    `[intermediate, hidden]` of the MLP (Phi-3 fuses them: `qkv_proj` rows `[q; k; v]`, `gate_up_proj` `[gate; up]`)."""
    attention, mlp = layer.self_attn, layer.mlp
    if config.model_type == "phi3":
        head_dim = config.hidden_size // config.num_attention_heads
        widths = [config.num_attention_heads * head_dim] + [config.num_key_value_heads * head_dim] * 2
        q, k, v = attention.qkv_proj.weight.split(widths)
        gate, up = mlp.gate_up_proj.weight.chunk(2)
    else:
        q, k, v = attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight
        gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
    return {"q": q, "k": k, "v": v, "gate": gate, "up": up}


def descending(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_reordering_sorts_by_l1_score_and_preserves_function(family):
    model = make_model(family)
    config, expected = model.config, logits(model)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    group_rows = config.num_attention_heads // config.num_key_value_heads * head_dim  # query rows per KV group
    before = [{name: w.detach().double().clone() for name, w in projections(layer, config).items()}
              for layer in model.model.layers]
    reorder_by_weight_magnitude(model, get_adapter(model))
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=1e-5)
    moved = False
    for layer, old in zip(model.model.layers, before):
        new = projections(layer, config)
        l1 = {name: old[name].abs().sum(dim=1).tolist() for name in old}  # L1 norm of every row
        # MLP channel j: L1(gate row j) + L1(up row j), largest first
        channels = descending([gate + up for gate, up in zip(l1["gate"], l1["up"])])
        for name in ("gate", "up"):
            assert torch.equal(new[name].double(), old[name][channels])
        # KV group g: mean L1 of its query rows + mean of L1(k row) + L1(v row) over its K/V rows, largest first
        groups = descending([
            sum(l1["q"][g * group_rows : (g + 1) * group_rows]) / group_rows
            + sum(k + v for k, v in zip(l1["k"][g * head_dim : (g + 1) * head_dim],
                                         l1["v"][g * head_dim : (g + 1) * head_dim])) / head_dim
            for g in range(config.num_key_value_heads)
        ])
        q_rows = [g * group_rows + r for g in groups for r in range(group_rows)]
        kv_rows = [g * head_dim + r for g in groups for r in range(head_dim)]
        assert torch.equal(new["q"].double(), old["q"][q_rows])
        assert torch.equal(new["k"].double(), old["k"][kv_rows]) and torch.equal(new["v"].double(), old["v"][kv_rows])
        moved |= channels != sorted(channels) or groups != sorted(groups)
    assert moved  # a random model's order is not the identity, so an unsorted result would have failed


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_equals_zeroed_dense_model(family, attn_implementation):
    overrides = EXACT_WIDTH_NORMS.get(family, {})
    reference = make_model(family, attn_implementation=attn_implementation, **overrides)
    zero_pruned_units(reference, STRUCTURE)
    pruned = make_model(family, attn_implementation=attn_implementation, **overrides)
    apply_structure(pruned, get_adapter(pruned), STRUCTURE)
    torch.testing.assert_close(logits(pruned), logits(reference), atol=1e-5, rtol=1e-5)
    assert read_structure(pruned, get_adapter(pruned)) == STRUCTURE


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_block_equals_skipping_it(family):
    model = make_model(family)
    adapter = get_adapter(model)
    layer = adapter.decoder_layers(model)[2]
    reference = copy.deepcopy(layer)
    with torch.no_grad():
        reference.self_attn.o_proj.weight.zero_()  # the attention branch adds nothing (family multipliers included)
    hidden = torch.randn(2, 8, model.config.hidden_size)
    structure = read_structure(model, adapter)
    structure.num_attention_heads[2] = structure.num_key_value_heads[2] = 0
    apply_structure(model, adapter, structure)
    assert isinstance(layer.self_attn, ZeroAttention)
    rotary = model.model.rotary_emb  # Gemma 3 has one RoPE base per layer kind
    kind = {"layer_type": model.config.layer_types[2]} if "layer_type" in signature(rotary.forward).parameters else {}
    position_embeddings = rotary(hidden, torch.arange(8)[None], **kind)
    with torch.no_grad():
        out = layer(hidden, position_embeddings=position_embeddings)
        expected = reference(hidden, position_embeddings=position_embeddings)
    torch.testing.assert_close(out, expected)
    assert not any("input_layernorm" in name for name, _ in layer.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_structure(family):
    model = make_model(family)
    adapter = get_adapter(model)
    dense = parameter_count_by_hand(model.config)
    assert count_parameters(model) == dense_parameter_count(model.config, adapter) == dense
    apply_structure(model, adapter, STRUCTURE)
    assert count_parameters(model) == parameter_count_by_hand(model.config, STRUCTURE) < dense


def test_count_by_hand_of_the_tiny_llama():
    # embeddings + lm_head 2 x 320 x 64, final norm 64; per layer q 64x64, k and v 32x64, o 64x64, norms 2 x 64,
    # gate/up/down 3 x 256x64
    per_layer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 2 * 64 + 3 * 256 * 64
    assert parameter_count_by_hand(make_model("llama").config) == 2 * 320 * 64 + 64 + 4 * per_layer == 287_296


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
