"""Pruning records that do not depend on dtype or device: float32 importance scores, and the weight order the search
pruned along, stored in the record and applied as it is."""

import dataclasses
import logging

import pytest
import torch
from testing_utils import make_model, search_config

from optimum_multipruner import FastSearchConfig, MultiPruner, MultiPrunerConfig, PruningRecord, get_adapter
from optimum_multipruner.record import PruningStep, encode_weight_order, from_multipruner_config
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import read_structure, weight_magnitude_orders


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def float32_copy(model):
    """A float32 model of `model`'s family holding exactly its (bfloat16) weight values."""
    copy = make_model(model.config.model_type)
    copy.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return copy


def assert_same_kept_weights(applied, pruned_weights):
    actual = applied.state_dict()
    assert actual.keys() == pruned_weights.keys()
    for name, expected in pruned_weights.items():  # every kept row and column, in the same order
        assert torch.equal(actual[name], expected.float()), name


@pytest.fixture(scope="module")
def bf16_search(tokenizer, calibration_file):
    """A bfloat16 search through all three stages: (pruned model's weights, its record, a bfloat16 dense copy)."""
    model = make_model("llama").to(torch.bfloat16)
    dense = make_model("llama").to(torch.bfloat16)
    pruner = MultiPruner(model, tokenizer)
    config = search_config(calibration_file, pruning_distribution=(10, 45, 45), num_calibration_samples_block=40,
                           num_calibration_samples_width=20)
    pruned = pruner.prune(config, progress=False)
    return pruned.state_dict(), pruner.record, dense


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_scores_are_float32_and_float32_weights_score_exactly_as_before(family):
    model = make_model(family)
    adapter = get_adapter(model)
    layout = adapter.attention_layout(model.config)
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    q, k, v = adapter.qkv_weights(attention)
    gate, up = adapter.gate_up_weights(mlp)
    # the formulas of the previous release, summed in the weights' dtype: the exact search keeps its choices
    before_kv = (q.abs().sum(1).view(2, -1).mean(1) + (k.abs().sum(1) + v.abs().sum(1)).view(2, -1).mean(1)).float()
    before_mlp = (gate.abs().sum(1) + up.abs().sum(1)).float()
    assert torch.equal(adapter.kv_group_scores(attention, layout), before_kv)
    assert torch.equal(adapter.mlp_channel_scores(mlp), before_mlp)

    bf16 = make_model(family).to(torch.bfloat16)
    scores = adapter.mlp_channel_scores(bf16.model.layers[0].mlp)
    assert scores.dtype == torch.float32
    assert torch.equal(scores, adapter.mlp_channel_scores(float32_copy(bf16).model.layers[0].mlp))
    for bf16_orders, float32_orders in zip(weight_magnitude_orders(bf16, adapter),
                                           weight_magnitude_orders(float32_copy(bf16), adapter)):
        assert all(torch.equal(a, b) for a, b in zip(bf16_orders, float32_orders))
    assert adapter.mlp_channel_scores(make_model(family).double().model.layers[0].mlp).dtype == torch.float64


def test_bf16_search_applied_to_the_float32_copy_keeps_the_same_channels_and_heads(bf16_search, caplog):
    pruned_weights, record, dense = bf16_search
    structure = record.structure
    assert record.weight_reorder and len(record.weight_order) == 4
    assert any(0 < w < 256 for w in structure.intermediate_size) and 1 in structure.num_key_value_heads
    with caplog.at_level(logging.WARNING):
        applied = MultiPruner(float32_copy(dense)).apply(record)
    assert "other channels" not in caplog.text  # the float32 copy sorts exactly as the bfloat16 search did
    assert next(applied.parameters()).dtype == torch.float32
    assert_same_kept_weights(applied, pruned_weights)


def test_the_recorded_order_is_applied_whatever_this_machine_scores(bf16_search, monkeypatch, caplog):
    """Another device sums the scores in another order (near-ties flip): `apply` rebuilds the search's order anyway,
    and says so when the model's own order would keep other units."""
    pruned_weights, record, dense = bf16_search
    adapter = get_adapter(dense)
    monkeypatch.setattr(type(adapter), "mlp_channel_scores", lambda self, mlp: -mlp.up_proj.weight.float().sum(1))
    with caplog.at_level(logging.WARNING):
        applied = MultiPruner(float32_copy(dense)).apply(record)
    assert "would keep other channels or KV groups in layers" in caplog.text
    assert_same_kept_weights(applied, pruned_weights)


def test_the_order_is_saved_and_records_without_it_still_load_and_apply(bf16_search, tmp_path):
    pruned_weights, record, dense = bf16_search
    assert PruningRecord.load(record.save(tmp_path / "record.json")).weight_order == record.weight_order
    data = record.to_dict()
    del data["weight_order"]  # a record written before the field existed: `apply` sorts the weights again
    old = PruningRecord.from_dict(data)
    assert old.weight_order is None
    assert_same_kept_weights(MultiPruner(float32_copy(dense)).apply(old), pruned_weights)


@pytest.mark.parametrize(
    "damage",
    [lambda order: order[:3], lambda order: [order[0][::-1], *order[1:]], lambda order: [["x", "y"]] * 4],
)
def test_a_damaged_order_is_refused_before_any_change(bf16_search, damage):
    _, record, dense = bf16_search
    damaged = PruningRecord.from_dict({**record.to_dict(), "weight_order": damage(record.weight_order)})
    model = float32_copy(dense)
    before = state(model)
    with pytest.raises(ValueError, match="Corrupted pruning record: `weight_order`"):
        MultiPruner(model).apply(damaged)
    assert_unchanged(model, before)


def test_order_encoding_round_trips():
    model = make_model("qwen2")
    adapter = get_adapter(model)
    orders = weight_magnitude_orders(model, adapter)
    record = PruningRecord("qwen2", 4, 0, None, True, weight_order=encode_weight_order(orders))
    decoded = record.layer_orders(model.config, adapter)
    assert all(torch.equal(a, b) for layer, other in zip(orders, decoded) for a, b in zip(layer, other))


def test_official_imports_have_no_order_and_sort_the_weights_again():
    model = make_model("llama", seed=1)
    adapter = get_adapter(model)
    heaviest = weight_magnitude_orders(model, adapter)[2][1][:128]  # layer 2's MLP channels by weight magnitude
    gate = model.model.layers[2].mlp.gate_proj.weight.clone()
    record = from_multipruner_config({"pruned_attn_idx": [0], "pruned_mlp_idx": [], "pruned_mlp_width": {"2": 128}},
                                     model.config)
    assert record.weight_order is None and record.weight_reorder
    applied = MultiPruner(model).apply(record)
    assert read_structure(applied, adapter) == record.structure
    assert torch.equal(applied.model.layers[2].mlp.gate_proj.weight, gate[heaviest])  # not the first 128 channels
    assert not torch.equal(heaviest.sort().values, torch.arange(128))


def test_a_step_writes_candidate_damage_only_when_it_screened():
    plain = PruningStep(1, "block", "remove_mlp", 2, 9.5, 0.1, 1000, 0)
    screened = dataclasses.replace(plain, candidate_damage={"remove_mlp[3]": 0.25})
    assert "candidate_damage" not in plain.to_dict()
    assert screened.to_dict()["candidate_damage"] == {"remove_mlp[3]": 0.25}
    assert [PruningStep(**step.to_dict()) for step in (plain, screened)] == [plain, screened]


def test_the_record_holds_its_config_and_old_records_with_removed_fields_still_load(caplog):
    """`record.config` is the `MultiPrunerConfig` (written as its `to_dict()`, as before); a record of an earlier
    version with a field this one no longer has (here `fast_search.min_keep`, and a top-level one) loads with a
    warning naming it, and its flat `fast_search_<name>` keys are read as today's."""
    config = MultiPrunerConfig(target_ratio=0.25, search_mode="fast")
    record = PruningRecord("llama", 4, 1000, PrunedStructure.dense(make_model("llama").config, get_adapter("llama")),
                           weight_reorder=False, config=config)
    data = record.to_dict()
    assert data["config"] == config.to_dict()
    assert PruningRecord.from_dict(data).config == config
    data["config"] = {**config.to_dict(), "fast_search": {**config.fast_search.to_dict(), "min_keep": 2},
                      "fast_search_keep": 0.25, "retired_knob": True}
    del data["config"]["fast_search"]["keep"]
    with caplog.at_level(logging.WARNING):
        loaded = PruningRecord.from_dict(data).config
    assert loaded == dataclasses.replace(config, fast_search=FastSearchConfig(keep=0.25))
    assert "`MultiPrunerConfig.fast_search.min_keep`" in caplog.text and "`MultiPrunerConfig.retired_knob`" in caplog.text
    with pytest.raises(ValueError, match=r"Unknown MultiPrunerConfig field\(s\) \['retired_knob'\]"):
        MultiPrunerConfig.from_dict(data["config"])  # a config given by a user is still checked strictly
