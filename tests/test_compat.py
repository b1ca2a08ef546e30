"""Every private upstream name `optimum_multipruner.compat` relies on still exists, with the parameters we pass it
and the attributes our overrides read: an upgrade of transformers, optimum, optimum-intel or lm-eval that breaks one
fails here, loudly."""

import inspect
from argparse import ArgumentParser

import pytest
from testing_utils import make_model

from optimum_multipruner import compat
from optimum_multipruner.architectures import ADAPTERS


@pytest.mark.parametrize("name", compat.UPSTREAM_NAMES, ids=lambda name: f"{name.module}.{name.qualname}")
def test_upstream_name_exists_with_the_parameters_we_pass(name):
    obj = name.load()
    assert callable(obj)
    parameters = inspect.signature(obj).parameters
    missing = [parameter for parameter in name.parameters if parameter not in parameters]
    assert not missing, f"{name.module}.{name.qualname} no longer takes {missing}: {inspect.signature(obj)}"


def test_phi3_fork_helpers_are_the_upstream_ones():
    """`architectures/phi3.py` imports them through compat: the very objects transformers' Phi-3 forward uses."""
    for name in (compat.PHI3_APPLY_ROTARY_POS_EMB, compat.PHI3_EAGER_ATTENTION):
        assert getattr(compat, name.qualname) is name.load()
    assert compat.Phi3Attention.forward is compat.PHI3_ATTENTION_FORWARD.load()
    assert compat.attention_implementation(make_model("phi3").config) == "eager"


def test_every_family_export_config_has_the_generator_slots_we_override():
    from optimum.exporters.tasks import TasksManager
    from optimum.utils.input_generators import DummyPastKeyValuesGenerator

    for family in ADAPTERS:
        stock = TasksManager.get_exporter_config_constructor(
            "openvino", model_type=family, task="text-generation-with-past", library_name="transformers"
        ).func
        for attribute in compat.PKV_GENERATOR_ATTRIBUTES:
            assert hasattr(stock, attribute), (family, attribute)
        assert issubclass(stock.DUMMY_PKV_GENERATOR_CLASS, DummyPastKeyValuesGenerator), family
        assert stock.DUMMY_PKV_GENERATOR_CLASS in stock.DUMMY_INPUT_GENERATOR_CLASSES, family
        assert "add_past_key_values" in dir(stock), family
        config = make_model(family).config
        export_config = stock(config, task="text-generation-with-past")
        assert compat.export_model_config(export_config) is config, family
        generator = stock.DUMMY_PKV_GENERATOR_CLASS("text-generation", export_config._normalized_config)
        assert isinstance(generator.batch_size, int) and isinstance(generator.sequence_length, int), family


def test_openvino_export_command_parses_the_arguments_the_hook_reads():
    from optimum.commands.export.openvino import OVExportCommand

    parser = ArgumentParser()
    OVExportCommand.parse_args(parser)
    args = parser.parse_args(["--model", "some-model", "out"])
    missing = [name for name in compat.OPENVINO_EXPORT_COMMAND_ARGS if not hasattr(args, name)]
    assert not missing, f"`optimum-cli export openvino` has no {missing} any more"
    assert args.task == "auto" and args.weight_format is None and args.quant_mode is None


def test_lm_eval_task_manager_lists_subtasks():
    assert isinstance(inspect.getattr_static(compat.LM_EVAL_TASK_MANAGER.load(), "all_subtasks"), property)


def test_accelerate_keeps_a_modules_hook_where_devices_reads_it():
    """`devices.py` reads accelerate's hooks through `compat.accelerate_hook` (the private `_hf_hook`)."""
    from accelerate.hooks import ModelHook, add_hook_to_module
    from torch import nn

    module, hook = nn.Linear(2, 2), ModelHook()
    assert compat.accelerate_hook(module) is None
    add_hook_to_module(module, hook)
    assert compat.accelerate_hook(module) is hook


def test_private_upstream_names_live_in_compat_only():
    """Outside compat.py no private upstream name the last round found: the package and its CLI reach them through
    compat, whose entries tests/test_compat.py checks."""
    import pathlib
    import re

    import optimum_multipruner

    package = pathlib.Path(optimum_multipruner.__file__).parent
    commands = package.parent / "optimum" / "commands"
    private = re.compile(r"\b(_name_or_path|_attn_implementation|_hf_hook|_raise_exceptions_for_\w+)\b")
    skipped = {package / "compat.py"}
    offenders = [
        f"{path.relative_to(package.parent)}:{number}"
        for path in sorted([*package.rglob("*.py"), *commands.rglob("*.py")])
        if path not in skipped
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if private.search(line)
    ]
    assert not offenders, offenders
