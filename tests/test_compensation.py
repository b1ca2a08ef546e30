"""Training-free compensation: the least-squares refit of narrowed output projections after pruning."""

import logging

import pytest
import torch
from testing_utils import make_model, search_config

from optimum_multipruner import CompensationConfig, MultiPruner, PruningRecord, count_parameters, get_adapter
from optimum_multipruner.apply_record import apply
from optimum_multipruner.data import build_calibration_sets
from optimum_multipruner.structure import PrunedStructure
from optimum_multipruner.surgery import has_attention, has_mlp

NARROWED = PrunedStructure(num_attention_heads=[4, 2, 0, 2], num_key_value_heads=[2, 1, 0, 1],
                           intermediate_size=[256, 64, 128, 0])
NARROWED_BRANCHES = [(1, "attention"), (1, "mlp"), (2, "mlp"), (3, "attention")]
DENSE = PrunedStructure([4] * 4, [2] * 4, [256] * 4)
BLOCKS_ONLY = PrunedStructure([4, 0, 4, 4], [2, 0, 2, 2], [256, 256, 0, 256])


def record_of(structure: PrunedStructure, calibration_file: str) -> PruningRecord:
    """A record of `structure` for the tiny Llama, with a search config naming the calibration text (no reordering:
    the first KV groups and channels are kept)."""
    model = make_model("llama")
    return PruningRecord(model_type="llama", num_hidden_layers=4, dense_parameters=count_parameters(model),
                         structure=structure, weight_reorder=False, config=search_config(calibration_file))


def branch(model, layer: int, kind: str):
    adapter = get_adapter(model)
    layer_module = adapter.decoder_layers(model)[layer]
    return adapter.attention(layer_module) if kind == "attention" else adapter.mlp(layer_module)


@torch.no_grad()
def branch_errors(model, dense, sequences) -> dict:
    """Per narrowed branch: |branch(x) - dense branch(x)|^2 / |dense branch(x)|^2 over the branch's own inputs x."""
    errors, handles = {}, []
    for layer, kind in NARROWED_BRANCHES:
        def hook(module, args, kwargs, output, key=(layer, kind)):
            target = branch(dense, *key)(*args, **kwargs)
            target, output = (t[0] if isinstance(t, tuple) else t for t in (target, output))
            error, energy = errors.get(key, (0.0, 0.0))
            errors[key] = (error + float((output - target).pow(2).sum()), energy + float(target.pow(2).sum()))
        handles.append(branch(model, layer, kind).register_forward_hook(hook, with_kwargs=True))
    for sequence in sequences:
        model(sequence[None], use_cache=False)
    for handle in handles:
        handle.remove()
    return {key: error / energy for key, (error, energy) in errors.items()}


def test_compensation_lowers_the_reconstruction_error_of_every_narrowed_branch(tokenizer, calibration_file):
    record = record_of(NARROWED, calibration_file)
    plain = MultiPruner(make_model("llama"), tokenizer).apply(record)
    pruner = MultiPruner(make_model("llama"), tokenizer)
    compensated = pruner.apply(record, compensation=CompensationConfig(alpha=1e-3))
    sequences = build_calibration_sets(search_config(calibration_file), tokenizer, 320)["width"][:8]

    before = branch_errors(plain, make_model("llama"), sequences)
    after = branch_errors(compensated, make_model("llama"), sequences)
    assert sorted(before) == NARROWED_BRANCHES
    for key in NARROWED_BRANCHES:
        assert after[key] < 0.7 * before[key], key
    refits = pruner.record.compensation["refits"]
    assert [(r["layer"], r["kind"]) for r in refits] == NARROWED_BRANCHES
    assert all(r["relative_error_after"] < r["relative_error_before"] for r in refits)
    # Only the output projections of the narrowed branches changed.
    plain_weights, compensated_weights = plain.state_dict(), compensated.state_dict()
    changed = {name for name in plain_weights if not torch.equal(plain_weights[name], compensated_weights[name])}
    assert changed == {"model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight",
                       "model.layers.2.mlp.down_proj.weight", "model.layers.3.self_attn.o_proj.weight"}


@pytest.mark.parametrize("structure", [DENSE, BLOCKS_ONLY], ids=["dense", "blocks-only"])
def test_no_narrowed_branch_leaves_the_weights_unchanged(structure, tokenizer, calibration_file):
    record = record_of(structure, calibration_file)
    plain = MultiPruner(make_model("llama"), tokenizer).apply(record).state_dict()
    pruner = MultiPruner(make_model("llama"), tokenizer)
    compensated = pruner.apply(record, compensation=CompensationConfig()).state_dict()
    assert plain.keys() == compensated.keys()
    assert all(torch.equal(plain[name], compensated[name]) for name in plain)
    assert pruner.record.compensation["refits"] == []


def test_removed_units_that_contribute_nothing_leave_the_weights_unchanged(tokenizer, calibration_file):
    """When the removed heads and channels have zero output columns, the pruned model computes the dense model's
    function: the refit's target is what the kept weights already give, so it must return them."""
    def silenced():
        model = make_model("llama")
        layers = get_adapter(model).decoder_layers(model)
        with torch.no_grad():
            for i, layer in enumerate(layers):
                layer.self_attn.o_proj.weight[:, NARROWED.num_attention_heads[i] * 16:] = 0  # head_dim 16
                layer.mlp.down_proj.weight[:, NARROWED.intermediate_size[i]:] = 0
        return model

    record = record_of(NARROWED, calibration_file)
    plain = MultiPruner(silenced(), tokenizer).apply(record).state_dict()
    pruner = MultiPruner(silenced(), tokenizer)
    compensated = pruner.apply(record, compensation=CompensationConfig(alpha=1e-3)).state_dict()
    for name in plain:
        torch.testing.assert_close(compensated[name], plain[name], atol=2e-5, rtol=1e-4)


def test_prune_with_compensation_equals_apply_with_compensation(tokenizer, calibration_file, tmp_path, caplog):
    config = search_config(calibration_file, target_ratio=0.1, pruning_distribution=(0, 80, 20))
    pruner = MultiPruner(make_model("llama"), tokenizer)
    pruned = pruner.prune(config, progress=False, compensation=CompensationConfig(alpha=0.05))
    compensation = pruner.record.compensation
    assert compensation["alpha"] == 0.05 and compensation["refits"]
    calibration = build_calibration_sets(config, tokenizer, 320)
    assert compensation["calibration_sequences"] == sum(len(sequences) for sequences in calibration.values())
    path = pruner.record.save(tmp_path / "record.json")
    assert PruningRecord.load(path).compensation == compensation

    again = MultiPruner(make_model("llama"), tokenizer).apply(path, compensation=CompensationConfig(alpha=0.05))
    expected = pruned.state_dict()
    for name, value in again.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5)

    with caplog.at_level(logging.WARNING):
        plain = MultiPruner(make_model("llama"), tokenizer)
        plain.apply(path)
    assert "compensated" in caplog.text and plain.record.compensation is None


def test_bad_compensation_input_is_refused_before_any_change(tokenizer, calibration_file):
    record = record_of(NARROWED, calibration_file)
    model = make_model("llama")
    dense = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="tokenizer"):
        MultiPruner(model).apply(record, compensation=CompensationConfig())
    with pytest.raises(ValueError, match="positive"):
        MultiPruner(model, tokenizer).apply(record, compensation=CompensationConfig(alpha=0))
    imported = record_of(NARROWED, calibration_file)
    imported.config = None
    with pytest.raises(ValueError, match="calibration"):
        MultiPruner(model, tokenizer).apply(imported, compensation=CompensationConfig())
    with pytest.raises(ValueError, match="positive"):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file), compensation=CompensationConfig(alpha=-1.0))
    layers = get_adapter(model).decoder_layers(model)
    assert all(has_attention(layer, get_adapter(model)) and has_mlp(layer, get_adapter(model)) for layer in layers)
    assert all(torch.equal(value, dense[name]) for name, value in model.state_dict().items())


def test_the_earlier_spelling_still_compensates_with_a_future_warning(tokenizer, calibration_file):
    """`compensate=True, compensation_alpha=x` (keywords, or positions as before) is `compensation=
    CompensationConfig(alpha=x)`, with a FutureWarning naming the new spelling, reported at the caller's line."""
    record = record_of(NARROWED, calibration_file)
    expected = MultiPruner(make_model("llama"), tokenizer).apply(
        record, compensation=CompensationConfig(alpha=1e-3)).state_dict()
    for call in (lambda model: MultiPruner(model, tokenizer).apply(record, compensate=True, compensation_alpha=1e-3),
                 lambda model: MultiPruner(model, tokenizer).apply(record, None, None, True, 1e-3),
                 lambda model: apply(model, record, tokenizer, None, None, True, 1e-3)):
        model = make_model("llama")
        with pytest.warns(FutureWarning, match=r"compensation=CompensationConfig\(alpha=0.001\)") as warned:
            call(model)
        assert [warning.filename for warning in warned if warning.category is FutureWarning] == [__file__]
        assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    plain = MultiPruner(make_model("llama"), tokenizer)
    with pytest.warns(FutureWarning, match="compensation=None"):
        plain.apply(record, compensate=False)
    assert plain.record.compensation is None
    with pytest.raises(ValueError, match="alone"):
        MultiPruner(make_model("llama"), tokenizer).apply(record, compensation=CompensationConfig(), compensate=True)
    config = search_config(calibration_file, target_ratio=0.1, pruning_distribution=(0, 80, 20))
    pruner = MultiPruner(make_model("llama"), tokenizer)
    with pytest.warns(FutureWarning, match="deprecated") as warned:
        pruner.prune(config, progress=False, compensate=True, compensation_alpha=0.05)
    assert [warning.filename for warning in warned if warning.category is FutureWarning] == [__file__]
    assert pruner.record.compensation["alpha"] == 0.05
