"""`optimum-cli multipruner prune`: search a pruned structure and save the pruned checkpoint.

Every `MultiPrunerConfig` field is an option (`--field-name`; the fields of `fast_search` are `--fast-search-name`),
built from the dataclass fields: their type hints, and the `help`, `choices` and `advanced` of their metadata.
optimum-cli builds the parsers at every start-up, when the library (torch) must not be imported: the package imports
lazily and `optimum_multipruner.configuration` imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from argparse import ArgumentParser
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .common import (
    MultiPrunerSubcommand,
    add_model_loading_args,
    check_model_loading_args,
    check_model_source,
    load_model_and_tokenizer,
    parse_bool,
    parse_list,
)

_SCALARS: dict[type, tuple[Callable[[str], Any], str]] = {
    int: (int, "N"), float: (float, "X"), str: (str, "TEXT"), bool: (parse_bool, "BOOL")
}
NONE = "none"  # typed for an optional field: set it to None (an option left out keeps the default or --config value)


@dataclass(frozen=True)
class ConfigOption:
    """A `MultiPrunerConfig` field (`path`: its name, or `("fast_search", name)`) as an option of `prune`."""

    path: tuple[str, ...]
    parse: Callable[[str], Any]
    metavar: Optional[str]
    help: str
    choices: Optional[tuple[Any, ...]] = None
    advanced: bool = False  # an implementation knob: listed in the "advanced" group of --help

    @property
    def name(self) -> str:
        return "_".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class _CommaSeparated:
    """Parser of a tuple field: comma-separated items, each parsed by `item`."""

    def __init__(self, item: Callable[[str], Any]) -> None:
        self.item = item
        self.__name__ = f"comma-separated {getattr(item, '__name__', 'value')}"  # argparse names it in its errors

    def __call__(self, text: str) -> tuple[Any, ...]:
        return tuple(self.item(part) for part in parse_list(text))


class _OrNone:
    """Parser of an optional field: `none` (returned as `NONE`, which `config_values` turns into None) or an item."""

    def __init__(self, item: Callable[[str], Any]) -> None:
        self.item = item
        self.__name__ = getattr(item, "__name__", "value")

    def __call__(self, text: str) -> Any:
        return NONE if text.strip().lower() == NONE else self.item(text)


def _option_type(hint: Any) -> tuple[Callable[[str], Any], Optional[str]]:
    """Parser and metavar for a field's type hint: `int`/`float`/`str`/`bool`, optional (`none` sets None) or not;
    `tuple[X, ...]` / `tuple[X, X]` (comma-separated). Other types are passed on as text, for
    `MultiPrunerConfig.validate` to check."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        inner = [argument for argument in arguments if argument is not type(None)]
        if len(inner) == 1:
            parse, metavar = _option_type(inner[0])
            return _OrNone(parse), f"{metavar}|{NONE}"
    if hint in _SCALARS:
        return _SCALARS[hint]
    if origin is tuple and arguments:
        parse, metavar = _option_type(arguments[0])
        return _CommaSeparated(parse), f"{metavar},..."
    return str, "VALUE"


def _default_text(value: Any) -> Optional[str]:
    """A default as it is typed on the command line, or None (no default shown for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _field_options(config: Any, prefix: tuple[str, ...] = ()) -> list[ConfigOption]:
    """One option per field of the dataclass instance `config` (its values are the defaults shown), nested dataclass
    fields flattened under their field's name."""
    hints = typing.get_type_hints(type(config))
    options = []
    for field in dataclasses.fields(config):
        default = getattr(config, field.name)
        if dataclasses.is_dataclass(default):
            options += _field_options(default, prefix + (field.name,))
            continue
        parse, metavar = _option_type(hints[field.name])
        choices = field.metadata.get("choices")
        if choices is not None:
            metavar = None
            choices = tuple(choices) + ((NONE,) if isinstance(parse, _OrNone) else ())
        text, default_text = field.metadata.get("help", ""), _default_text(default)
        options.append(ConfigOption(
            path=prefix + (field.name,), parse=parse, metavar=metavar, choices=choices,
            help=f"{text} (default {default_text})" if default_text is not None else text,
            advanced=field.metadata.get("advanced", False),
        ))
    return options


def config_options() -> tuple[ConfigOption, ...]:
    """One option per `MultiPrunerConfig` field (and per field of its `fast_search`), in field order."""
    from optimum_multipruner.configuration import MultiPrunerConfig  # standard library only

    return tuple(_field_options(MultiPrunerConfig()))


def config_values(args, options: tuple[ConfigOption, ...]) -> dict[str, Any]:
    """The `MultiPrunerConfig` fields of `--config` (any version's keys, with or without its type tag) with those
    given as options over them."""
    from optimum_multipruner.configuration import MultiPrunerConfig

    values: dict[str, Any] = {}
    if args.config:
        from optimum_multipruner.utils import read_json

        values = read_json(args.config)
        if not isinstance(values, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of MultiPrunerConfig fields.")
        values = MultiPrunerConfig.fields_from_dict(values)
    for option in options:
        value = getattr(args, option.name)
        if value is None:
            continue
        *parents, name = option.path
        target = values
        for parent in parents:
            target[parent] = dict(target.get(parent) or {})
            target = target[parent]
        target[name] = None if value == NONE else value
    return values


class PruneCommand(MultiPrunerSubcommand):
    HELP = "Prune a Hugging Face causal LM (MultiPruner or BlockPruner search) and save the pruned checkpoint."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("-m", "--model", required=True, help="dense model folder or Hub id")
        parser.add_argument("output", help="folder of the pruned checkpoint")
        parser.add_argument("--config", help="MultiPrunerConfig JSON file; options given here override it")
        parser.add_argument(
            "--blockpruner", action="store_true",
            help="BlockPruner: remove whole attention/MLP sub-blocks only (128 block calibration rows by default)",
        )
        group = parser.add_argument_group("search settings (MultiPrunerConfig fields)")
        advanced = parser.add_argument_group(
            "advanced search settings", "implementation knobs a search seldom needs to change"
        )
        for option in config_options():
            (advanced if option.advanced else group).add_argument(
                option.flag, dest=option.name, type=option.parse, metavar=option.metavar, choices=option.choices,
                help=option.help,
            )
        add_model_loading_args(parser)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
        parser.add_argument(
            "--checkpoint-dir", help="write the search progress here after every step, so it can be resumed"
        )
        parser.add_argument("--resume", metavar="CHECKPOINT_DIR", help="resume the interrupted search saved there")
        parser.add_argument(
            "--shared-from", metavar="CHECKPOINT_DIR",
            help="the --checkpoint-dir of the same search with a larger --target-ratio: start from the first-stage "
            "steps the two share (same result, less work)",
        )

    def execute(self) -> None:
        args = self.args
        check_model_loading_args(args)
        check_model_source(args.model)
        from optimum_multipruner import MultiPruner, MultiPrunerConfig, count_parameters, distributed
        from optimum_multipruner.utils import check_output_dir

        if distributed.is_main_process():  # under torchrun only rank 0 writes the output
            check_output_dir(args.output, args.overwrite)  # fail before loading anything
        values = config_values(args, config_options())
        if args.blockpruner:
            if "pruning_distribution" in values:
                raise ValueError("--blockpruner fixes the pruning distribution to blocks only; drop the distribution.")
            try:
                config = MultiPrunerConfig.blockpruner(**values)
            except TypeError as error:  # an unknown field in --config
                raise ValueError(f"Invalid MultiPrunerConfig: {error}") from error
        else:
            config = MultiPrunerConfig.from_dict(values)
        model, tokenizer = load_model_and_tokenizer(args)
        pruner = MultiPruner(model, tokenizer)
        pruner.prune(
            config, progress=not args.no_progress, checkpoint_dir=args.checkpoint_dir, resume_from=args.resume,
            shared_from=args.shared_from,
        )
        pruner.save_pretrained(args.output, overwrite=args.overwrite)
        distributed.release()  # the process group `prune` made under torchrun, if it made one
        if not distributed.is_main_process():
            return
        record = pruner.record
        kept = count_parameters(model)
        print(
            f"Pruned {args.model}: {record.dense_parameters:,} -> {kept:,} parameters "
            f"({100 * (1 - kept / record.dense_parameters):.2f}% removed, {len(record.steps)} steps). "
            f"Saved to {args.output}"
        )
