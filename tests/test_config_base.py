"""`ConfigMixin`: the one serialisation of every config (type tag, unknown fields, old files)."""

import json

import pytest

from optimum_multipruner import CompensationConfig, FastSearchConfig, MultiPrunerConfig, RecoveryConfig
from optimum_multipruner.config_base import CONFIG_TYPE_KEY, ConfigMixin

CONFIGS = [
    MultiPrunerConfig(target_ratio=0.1, search_mode="fast", fast_search=FastSearchConfig(keep=0.25)),
    FastSearchConfig(screen=0.5, tie_z=1.0),
    CompensationConfig(alpha=0.05),
    RecoveryConfig(dataset=["a.jsonl", "b.jsonl"], max_tokens=1000, dataset_weights=[3.0, 1.0], quantization="int4"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: type(config).__name__)
def test_every_config_round_trips_with_its_type_tag(config, tmp_path):
    assert isinstance(config, ConfigMixin)
    path = config.save_pretrained(tmp_path)
    assert path.endswith(type(config).CONFIG_NAME)
    saved = json.loads(open(path, encoding="utf-8").read())
    assert saved[CONFIG_TYPE_KEY] == type(config).__name__
    assert CONFIG_TYPE_KEY not in config.to_dict()  # records hold `to_dict()`: their bytes stay as they were
    assert type(config).from_pretrained(tmp_path) == config
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: type(config).__name__)
def test_a_file_without_the_tag_loads_as_before(config, tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    assert type(config).from_pretrained(path) == config


def test_another_configs_file_is_refused_by_name(tmp_path):
    path = RecoveryConfig(dataset="c4.jsonl", max_tokens=10).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="This is a RecoveryConfig, not a MultiPrunerConfig"):
        MultiPrunerConfig.from_pretrained(path)


@pytest.mark.parametrize("data, message", [
    ({"dataset": "c4.jsonl"}, "Invalid RecoveryConfig: .*max_tokens"),
    ({"dataset": "c4.jsonl", "max_tokens": 10, "epochs": 3}, r"Unknown RecoveryConfig field\(s\) \['epochs'\]"),
    ([1], "A RecoveryConfig must be a JSON object"),
])
def test_bad_dicts_are_value_errors(data, message):
    with pytest.raises(ValueError, match=message):
        RecoveryConfig.from_dict(data)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), True, "0.1"])
def test_compensation_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match=r"ridge strength \(`alpha`\) must be a positive number"):
        CompensationConfig(alpha=alpha)
