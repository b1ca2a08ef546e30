"""The greedy search (MultiPruner and BlockPruner modes), applying records, and input checks."""

import json
import math

import pytest
import torch
from testing_utils import FAMILIES, make_model, make_tokenizer, search_config, train_briefly
from transformers import GPT2Config, GPT2LMHeadModel

from optimum_multipruner import MultiPruner, MultiPrunerConfig, PruningRecord, count_parameters, get_adapter
from optimum_multipruner.surgery import ZeroAttention


_TRAINED = {}


def trained_model(family, tokenizer):
    """A briefly trained tiny model (cached per family), returned as a fresh copy."""
    if family not in _TRAINED:
        _TRAINED[family] = train_briefly(make_model(family), tokenizer).state_dict()
    model = make_model(family)
    model.load_state_dict(_TRAINED[family])
    return model


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_useless_block_is_removed_first(family, tokenizer, calibration_file):
    model = trained_model(family, tokenizer)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
    pruner = MultiPruner(model, tokenizer)
    pruner.prune(MultiPrunerConfig.blockpruner(0.01, **_small_calibration(calibration_file)), progress=False)
    first = pruner.record.steps[0]
    assert (first.action, first.layer) == ("remove_attention", 2)
    # removing a block that contributes nothing leaves the calibration perplexity exactly as it was
    assert first.perplexity == pytest.approx(pruner.record.start_perplexity["block"], rel=1e-6)


def _small_calibration(calibration_file):
    return dict(calibration_dataset=calibration_file, num_calibration_samples_block=200, sequence_length=64,
                batch_size=4)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_accelerated_search_makes_the_same_choices_as_plain(family, tokenizer, calibration_file):
    records = {}
    for accelerated in (False, True):
        pruner = MultiPruner(trained_model(family, tokenizer), tokenizer)
        pruner.prune(search_config(calibration_file, accelerated_search=accelerated, pruning_distribution=(10, 45, 45), block_types=("attention",)), progress=False)
        records[accelerated] = pruner.record
    plain, fast = records[False], records[True]
    assert [(s.action, s.layer) for s in fast.steps] == [(s.action, s.layer) for s in plain.steps]
    for a, b in zip(fast.steps, plain.steps):
        assert a.perplexity == pytest.approx(b.perplexity, rel=1e-6)
        assert a.ratio == b.ratio
    assert {s.stage for s in fast.steps} == {"block", "mlp", "attention"}
    def work(record):  # a stage with few, early-layer candidates may cost more (cache refresh); the search costs less
        return sum(stats["full_forward_equivalents"] for stats in record.search_stats.values())

    assert work(fast) < work(plain)


def test_a_candidate_that_cannot_win_is_stopped_early(tokenizer, calibration_file):
    from contextlib import contextmanager

    from optimum_multipruner.candidates import Candidate
    from optimum_multipruner.data import build_sequences, load_text_rows
    from optimum_multipruner.scoring import CandidateScorer

    model = trained_model("llama", tokenizer)
    sequences = build_sequences(tokenizer, load_text_rows(calibration_file)[:300], 64)
    head = model.get_output_embeddings()

    @contextmanager
    def trial(candidate):  # "remove_mlp" stands for a harmless change, "remove_attention" for a ruinous one
        scale = 1000.0 if candidate.action == "remove_attention" else 1.0
        with torch.no_grad():
            head.weight.mul_(scale)
        yield
        with torch.no_grad():
            head.weight.div_(scale)

    candidates = [Candidate("remove_mlp", 3), Candidate("remove_attention", 3)]
    fast = CandidateScorer(model, get_adapter(model), sequences, 4, accelerated=True, progress=False)
    best, total = fast.select(candidates, trial)
    plain = CandidateScorer(model, get_adapter(model), sequences, 4, accelerated=False, progress=False)
    plain_best, plain_total = plain.select(candidates, trial)
    assert best == plain_best and total == pytest.approx(plain_total, rel=1e-9)
    assert fast.stats.candidates_stopped_early == 1 and plain.stats.candidates_stopped_early == 0
    assert fast.stats.full_forward_equivalents < plain.stats.full_forward_equivalents


def test_ratio_counts_all_parameters_and_stages_overshoot_by_at_most_one_unit(tokenizer, calibration_file):
    model = trained_model("llama", tokenizer)
    dense = count_parameters(model)
    cfg = search_config(calibration_file)
    pruner = MultiPruner(model, tokenizer)
    pruned = pruner.prune(cfg, progress=False)
    steps = pruner.record.steps
    assert steps[-1].num_parameters == count_parameters(pruned)
    assert steps[-1].ratio == pytest.approx(1 - count_parameters(pruned) / dense, abs=0)
    assert steps[-1].ratio >= cfg.target_ratio
    stages = [s.stage for s in steps]
    assert stages == sorted(stages, key=["block", "mlp", "attention"].index)  # fixed stage order
    for stage, target in cfg.stage_targets.items():
        stage_steps = [s for s in steps if s.stage == stage]
        before_last = [s.ratio for s in steps if s.step < stage_steps[-1].step] if stage_steps else []
        if stage_steps:
            assert stage_steps[-1].ratio >= target
            assert not before_last or before_last[-1] < target  # one unit past the target at most
    assert type(pruned).__name__ == "MultiPrunedLlamaForCausalLM"


def test_applying_a_saved_record_reproduces_the_model_exactly(tokenizer, calibration_file, tmp_path):
    pruner = MultiPruner(trained_model("qwen2", tokenizer), tokenizer)
    pruned = pruner.prune(search_config(calibration_file), progress=False)
    path = pruner.record.save(tmp_path / "record.json")
    again = MultiPruner(trained_model("qwen2", tokenizer), tokenizer).apply(path)
    assert_unchanged(again, weights(pruned))
    record = PruningRecord.load(path)
    assert record.to_dict() == pruner.record.to_dict()


def test_pruner_save_pretrained_is_atomic_and_refuses_to_overwrite(tokenizer, calibration_file, tmp_path):
    pruner = MultiPruner(trained_model("llama", tokenizer), tokenizer)
    pruner.prune(MultiPrunerConfig.blockpruner(0.01, **_small_calibration(calibration_file)), progress=False)
    out = tmp_path / "out"
    pruner.save_pretrained(out)
    assert {"config.json", "model.safetensors", "pruning_record.json", "tokenizer.json"} <= set(p.name for p in out.iterdir())
    stamp = (out / "config.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        pruner.save_pretrained(out)
    assert (out / "config.json").read_text() == stamp
    pruner.save_pretrained(out, overwrite=True)


# --------------------------------------------------------------------------- official formats
def test_official_multipruner_config_loads(tokenizer):
    model = make_model("llama")  # 4 layers, 4 heads x 16 = 64 query channels in 2 KV groups of 32, MLP 256
    official = {
        "pruned_attn_idx": [3, 0],
        "pruned_mlp_idx": [1],
        "pruned_attn_width": {"0": 64, "1": 32, "2": 64, "3": 64},
        "pruned_mlp_width": {"0": 192, "1": 256, "2": 128, "3": 256},
    }
    record = PruningRecord.load(_write(official), model.config)
    assert record.structure.num_key_value_heads == [0, 1, 2, 0]
    assert record.structure.num_attention_heads == [0, 2, 4, 0]
    assert record.structure.intermediate_size == [192, 0, 128, 256]
    assert record.weight_reorder
    pruned = MultiPruner(model, tokenizer).apply(record)
    assert isinstance(pruned.model.layers[0].self_attn, ZeroAttention)
    assert pruned.model.layers[2].mlp.up_proj.out_features == 128


def test_official_blockpruner_result_loads_with_removal_order(tokenizer):
    model = make_model("llama")
    official = {"1": [["mha", 2]], "2": [["mlp", 1], ["mha", 2]], "3": [["mha", 0], ["mlp", 1], ["mha", 2]]}
    record = PruningRecord.load(_write(official), model.config, num_blocks=2)
    assert [(s.action, s.layer) for s in record.steps] == [("remove_attention", 2), ("remove_mlp", 1)]
    assert not record.weight_reorder
    record = PruningRecord.load(_write(official), model.config)
    assert record.structure.num_key_value_heads == [0, 2, 0, 2]
    MultiPruner(model, tokenizer).apply(record)
    with pytest.raises(ValueError, match="not entry"):
        PruningRecord.load(_write({"1": [["mha", 2]], "2": [["mlp", 1]]}), model.config)


def _write(data):
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(data, handle)
    handle.close()
    return handle.name


# --------------------------------------------------------------------------- bad input
def test_unsupported_architecture_names_the_supported_families(tokenizer):
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=320))
    with pytest.raises(ValueError, match="llama, mistral, phi3, qwen2, qwen3"):
        MultiPruner(model, tokenizer)


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, math.nan, "0.2", True])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="target_ratio"):
        MultiPrunerConfig(target_ratio=ratio)


@pytest.mark.parametrize("distribution", [(0, 0, 0), (1, -1, 1), (1, 1), (math.nan, 1, 1)])
def test_bad_distribution(distribution):
    with pytest.raises(ValueError, match="pruning_distribution"):
        MultiPrunerConfig(pruning_distribution=distribution)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attn_channel_group_size=16), "whole KV group"),  # one KV group is 2 heads x 16 = 32 channels
        (dict(attn_channel_group_size=64), "smaller than the attention width"),
        (dict(mlp_channel_group_size=256), "smaller than the MLP width"),
        (dict(sequence_length=100000), "fewer than one sequence"),
        (dict(num_calibration_samples_width=5000), "has only 2000"),
    ],
)
def test_bad_settings_fail_before_any_weight_is_touched(overrides, message, tokenizer, calibration_file):
    model = make_model("llama")
    before = weights(model)
    with pytest.raises(ValueError, match=message):
        MultiPruner(model, tokenizer).prune(search_config(calibration_file, **overrides), progress=False)
    assert_unchanged(model, before)


def test_mlp_group_must_keep_widths_aligned():
    with pytest.raises(ValueError, match="multiple of `width_alignment`"):
        MultiPrunerConfig(mlp_channel_group_size=1000)


def test_tokenizer_of_another_model_is_rejected(calibration_file):
    model = make_model("llama", vocab_size=100)
    model.resize_token_embeddings(100)
    before = weights(model)
    with pytest.raises(ValueError, match="does not belong to this model"):
        MultiPruner(model, make_tokenizer()).prune(search_config(calibration_file), progress=False)
    assert_unchanged(model, before)


def test_record_that_does_not_fit_the_model_is_rejected(tokenizer, calibration_file, tmp_path):
    pruner = MultiPruner(trained_model("llama", tokenizer), tokenizer)
    pruner.prune(MultiPrunerConfig.blockpruner(0.01, **_small_calibration(calibration_file)), progress=False)
    path = pruner.record.save(tmp_path / "record.json")
    other = make_model("llama", num_hidden_layers=3)
    before = weights(other)
    with pytest.raises(ValueError, match="4-layer llama"):
        MultiPruner(other, tokenizer).apply(path)
    assert_unchanged(other, before)
    (tmp_path / "broken.json").write_text(path and open(path).read()[:100])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        MultiPruner(make_model("llama"), tokenizer).apply(tmp_path / "broken.json")
