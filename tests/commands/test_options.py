"""Every command's config options come from its config's fields (`optimum/commands/multipruner/options.py`)."""

import dataclasses
from argparse import ArgumentParser

import pytest

from optimum.commands.multipruner.export import ExportCommand
from optimum.commands.multipruner.options import compensation_config
from optimum.commands.multipruner.prune import PruneCommand
from optimum.commands.multipruner.recover import RecoverCommand, recovery_values
from optimum_multipruner.configuration import CompensationConfig, FastSearchConfig, MultiPrunerConfig
from optimum_multipruner.recovery import RecoveryConfig


def parser_of(command) -> ArgumentParser:
    parser = ArgumentParser()
    command.parse_args(parser)  # the parser optimum-cli builds
    return parser


def field_dests(config_class, prefix=""):
    """The argparse destination of every field, nested configs flattened as `<field>_<name>`."""
    dests = set()
    for field in dataclasses.fields(config_class):
        nested = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested):
            dests |= field_dests(type(nested), f"{prefix}{field.name}_")
        else:
            dests.add(prefix + field.name)
    return dests


def option_dests(parser: ArgumentParser) -> dict[str, str]:
    return {action.dest: action.help or "" for action in parser._actions}


@pytest.mark.parametrize("command, configs", [
    (PruneCommand, [(MultiPrunerConfig, ""), (CompensationConfig, "compensation_")]),
    (RecoverCommand, [(RecoveryConfig, "")]),
    (ExportCommand, [(CompensationConfig, "compensation_")]),
])
def test_each_commands_options_cover_its_configs(command, configs):
    options = option_dests(parser_of(command))
    for config_class, prefix in configs:
        missing = field_dests(config_class, prefix) - set(options)
        assert not missing, f"{command.__name__} has no option for {sorted(missing)}"
        assert all(options[dest] for dest in field_dests(config_class, prefix)), "every option has its field's help"
    assert field_dests(FastSearchConfig, "fast_search_") <= set(option_dests(parser_of(PruneCommand)))


def test_recover_keeps_its_aliases_and_list_parsing():
    args = parser_of(RecoverCommand).parse_args([
        "-m", "pruned", "out", "--teacher", "dense", "--dataset", "a.jsonl,b.jsonl", "--dataset-weights", "3,1",
        "--max-tokens", "256", "--weight-format", "int4", "--group-size", "16", "--ratio", "0.8",
        "--lora-alpha", "16", "--lora-target-modules", "q_proj", "--training-args", '{"use_cpu": true}',
        "--bf16", "false",
    ])
    values = recovery_values(args)
    assert values == {"dataset": ["a.jsonl", "b.jsonl"], "dataset_weights": [3.0, 1.0], "max_tokens": 256,
                      "teacher": "dense", "quantization": "int4", "quantization_group_size": 16,
                      "quantization_ratio": 0.8, "lora_alpha": 16, "lora_target_modules": ["q_proj"],
                      "training_args": {"use_cpu": True}, "bf16": False}
    assert isinstance(values["lora_alpha"], int)  # an int field gets an int (it was parsed as a float)
    one = recovery_values(parser_of(RecoverCommand).parse_args(["-m", "p", "o", "--dataset", "a.jsonl",
                                                                  "--max-tokens", "8"]))
    assert one == {"dataset": "a.jsonl", "max_tokens": 8}  # one source stays a string (the same data hash)
    assert RecoveryConfig.from_dict(values).sources == ["a.jsonl", "b.jsonl"]


def test_recover_offers_the_configs_choices():
    parser = parser_of(RecoverCommand)
    with pytest.raises(SystemExit):
        parser.parse_args(["-m", "p", "o", "--method", "qlora"])
    choices = {action.dest: action.choices for action in parser._actions if action.choices}
    assert choices["method"] == ("full", "lora") and "cosine" in choices["lr_scheduler_type"]


@pytest.mark.parametrize("command", [PruneCommand, ExportCommand])
def test_compensation_options(command):
    parser = parser_of(command)
    base = ["-m", "model", "out"]
    assert compensation_config(parser.parse_args(base)) is None
    assert compensation_config(parser.parse_args([*base, "--compensate"])) == CompensationConfig()
    given = parser.parse_args([*base, "--compensate", "--compensation-alpha", "0.05"])
    assert compensation_config(given) == CompensationConfig(alpha=0.05)
    with pytest.raises(ValueError, match="add --compensate"):
        compensation_config(parser.parse_args([*base, "--compensation-alpha", "0.05"]))
