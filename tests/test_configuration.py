"""`MultiPrunerConfig`: defaults, derived targets, (de)serialisation, validation."""

import json
import re

import pytest

from optimum_multipruner import FastSearchConfig, MultiPrunerConfig


def test_defaults_follow_the_reference():
    config = MultiPrunerConfig()
    assert config.pruning_distribution == (44.0, 52.0, 4.0)
    assert (config.mlp_channel_group_size, config.attn_channel_group_size) == (1024, None)  # None: one KV group
    assert (config.num_calibration_samples_block, config.num_calibration_samples_width) == (256, 128)
    assert (config.sequence_length, config.seed, config.calibration_dataset) == (2048, 42, "alpaca")
    assert config.weight_reorder and config.active_stages == ("block", "mlp", "attention")


def test_stage_targets_are_cumulative():
    targets = MultiPrunerConfig(target_ratio=0.22, pruning_distribution=(44, 52, 4)).stage_targets
    assert targets["block"] == pytest.approx(0.22 * 0.44)
    assert targets["mlp"] == pytest.approx(0.22 * 0.96)
    assert targets["attention"] == pytest.approx(0.22)


def test_blockpruner_mode():
    config = MultiPrunerConfig.blockpruner(0.2, max_steps=12)
    assert config.is_blockpruner and config.active_stages == ("block",)
    assert config.num_calibration_samples_block == 128 and config.max_steps == 12
    assert not MultiPrunerConfig().is_blockpruner


def test_round_trip(tmp_path):
    config = MultiPrunerConfig(target_ratio=0.1, pruning_distribution=(10, 90, 0), block_types=("attention",))
    assert MultiPrunerConfig.from_dict(config.to_dict()) == config
    path = config.save_pretrained(tmp_path)
    assert json.loads(open(path).read())["pruning_distribution"] == [10.0, 90.0, 0.0]
    assert MultiPrunerConfig.from_pretrained(tmp_path) == config
    assert MultiPrunerConfig.from_pretrained(path) == config


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"target_ratio": 0.2', "corrupted or truncated"),
        ('{"target_ratio": 0.2, "colour": "red"}', "Unknown MultiPrunerConfig field"),
        ('{"target_ratio": 2}', "target_ratio"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, text, message):
    (tmp_path / "multipruner_config.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        MultiPrunerConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("mlp_channel_group_size", 0),
        ("attn_channel_group_size", -128),
        ("sequence_length", 1.5),
        ("batch_size", True),
        ("max_steps", 0),
        ("block_types", ("attention", "norm")),
    ],
)
def test_invalid_fields(field, value):
    with pytest.raises(ValueError, match=field):
        MultiPrunerConfig(**{field: value})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"first_sequences": 0}, "fast_search.first_sequences"),
        ({"keep": 0.0}, "fast_search.keep"),
        ({"screen": 0.0}, "fast_search.screen"),
        ({"screen": 1.5}, "fast_search.screen"),
        ({"screen": float("nan")}, "fast_search.screen"),
        ({"screen": float("inf")}, "fast_search.screen"),
        ({"screen_radius": -1}, "fast_search.screen_radius"),
        ({"screen_radius": 1.5}, "fast_search.screen_radius"),
        ({"screen_radius": True}, "fast_search.screen_radius"),
        ({"tie_z": -1.0}, "fast_search.tie_z"),
        ({"tie_z": float("nan")}, "fast_search.tie_z"),
        ({"tie_z": True}, "fast_search.tie_z"),
        ({"colour": "red"}, "Unknown FastSearchConfig field(s) ['colour']"),
    ],
)
def test_invalid_fast_search_fields(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MultiPrunerConfig(search_mode="fast", fast_search=values)


def test_fast_search_nests_and_old_flat_keys_still_load(tmp_path):
    """`fast_search` takes a `FastSearchConfig` or a dict and is saved nested; a file written before it existed
    (flat `fast_search_<name>` keys) loads to the same configuration."""
    config = MultiPrunerConfig(search_mode="fast", fast_search={"screen": 0.5, "keep": 0.25})
    assert config.fast_search == FastSearchConfig(screen=0.5, keep=0.25) and config.fast_search.tie_z is None
    assert config.to_dict()["fast_search"] == {"first_sequences": 1, "keep": 0.25, "screen": 0.5,
                                               "screen_radius": 1, "tie_z": None}
    old = {key: value for key, value in config.to_dict().items() if key != "fast_search"}
    old.update(fast_search_first_sequences=1, fast_search_keep=0.25, fast_search_screen=0.5,
               fast_search_screen_radius=1, fast_search_tie_z=None)
    (tmp_path / "multipruner_config.json").write_text(json.dumps(old))
    assert MultiPrunerConfig.from_pretrained(tmp_path) == config
    assert MultiPrunerConfig.from_dict({"search_mode": "fast", "fast_search_keep": 0.25}).fast_search.keep == 0.25
    with pytest.raises(ValueError, match=r"Unknown FastSearchConfig field\(s\) \['colour'\]"):
        MultiPrunerConfig.from_dict({"fast_search_colour": 1})
