"""Command-line options generated from a config dataclass (`optimum_multipruner.config_base.option` fields): one
`--field-name` per field (nested config fields as `--<field>-<name>`), parsed by its type hint, with the `help`,
`choices`, `advanced` and `aliases` of its metadata and its default shown. Every command that takes a config builds
its options here, so a field added to a config is an option at once.

Standard library only: optimum-cli builds the parsers at every start-up.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from argparse import ArgumentParser, ArgumentTypeError, Namespace
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .common import parse_bool, parse_list

_SCALARS: dict[type, tuple[Callable[[str], Any], str]] = {
    int: (int, "N"), float: (float, "X"), str: (str, "TEXT"), bool: (parse_bool, "BOOL")
}
NONE = "none"  # typed for an optional field: set it to None (an option left out keeps the default or --config value)


@dataclass(frozen=True)
class ConfigOption:
    """A config field (`path`: its name, or `(parent, name)` for a field of a nested config) as an option."""

    path: tuple[str, ...]
    parse: Callable[[str], Any]
    metavar: Optional[str]
    help: str
    choices: Optional[tuple[Any, ...]] = None
    advanced: bool = False  # an implementation knob: listed in the "advanced" group of --help
    aliases: tuple[str, ...] = ()  # further flags, e.g. the name optimum-cli export openvino gives the setting

    @property
    def name(self) -> str:
        return "_".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class _CommaSeparated:
    """Parser of a tuple or list field: comma-separated items, each parsed by `item`."""

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


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ArgumentTypeError(f"expected JSON ({error}), got {text!r}") from None


parse_json.__name__ = "JSON"


def _option_type(hint: Any) -> tuple[Callable[[str], Any], Optional[str]]:
    """Parser and metavar for a field's type hint: `int`/`float`/`str`/`bool`, optional (`none` sets None) or not;
    `tuple[X, ...]` / `tuple[X, X]` / `list[X]` / `Union[X, list[X]]` (comma-separated); `dict` (JSON). Other types
    are passed on as text, for the config's validation to check."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [argument for argument in arguments if argument is not type(None)]
        optional = len(inner) < len(arguments)
        if optional and len(inner) == 1:
            parse, metavar = _option_type(inner[0])
            return _OrNone(parse), f"{metavar}|{NONE}"
        sequences = [argument for argument in inner if typing.get_origin(argument) in (list, tuple)]
        if not optional and len(inner) == 2 and len(sequences) == 1:  # one item or several: comma-separated
            return _option_type(sequences[0])
        return str, "VALUE"
    if hint in _SCALARS:
        return _SCALARS[hint]
    if origin in (tuple, list) and arguments:
        parse, metavar = _option_type(arguments[0])
        return _CommaSeparated(parse), f"{metavar},..."
    if origin is dict or hint is dict:
        return parse_json, "JSON"
    return str, "VALUE"


def _default_text(value: Any) -> Optional[str]:
    """A default as it is typed on the command line, or None (no default shown for None or a required field)."""
    if value is None or value is dataclasses.MISSING:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value) if value else None
    return str(value)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def config_options(config_class: type, prefix: tuple[str, ...] = ()) -> tuple[ConfigOption, ...]:
    """One option per field of the dataclass `config_class` (its defaults are the ones shown), in field order; the
    fields of a nested config flattened under their field's name."""
    hints = typing.get_type_hints(config_class)
    options: list[ConfigOption] = []
    for field in dataclasses.fields(config_class):
        default = _default(field)
        if dataclasses.is_dataclass(default):
            options += config_options(type(default), prefix + (field.name,))
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
            advanced=field.metadata.get("advanced", False), aliases=tuple(field.metadata.get("aliases", ())),
        ))
    return tuple(options)


def add_config_options(parser: ArgumentParser, options: tuple[ConfigOption, ...], title: str,
                       advanced_title: Optional[str] = None) -> None:
    """The options in an argument group `title`; the advanced ones in a group of their own after it."""
    group = parser.add_argument_group(title)
    advanced = group
    if any(option.advanced for option in options):
        advanced = parser.add_argument_group(advanced_title or f"advanced {title}",
                                             "implementation knobs a run seldom needs to change")
    for option in options:
        (advanced if option.advanced else group).add_argument(
            option.flag, *option.aliases, dest=option.name, type=option.parse, metavar=option.metavar,
            choices=option.choices, help=option.help,
        )


def config_values(args: Namespace, options: tuple[ConfigOption, ...],
                  values: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """`values` (e.g. a `--config` file's fields) with the options given on the command line over them, nested
    fields in their own dicts; `none` becomes None."""
    values = dict(values or {})
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


# --------------------------------------------------------------------------- the compensation of `prune` and `export`
COMPENSATION = "compensation"  # the prefix of the `CompensationConfig` options: --compensation-alpha


def compensation_options() -> tuple[ConfigOption, ...]:
    from optimum_multipruner.configuration import CompensationConfig  # standard library only

    return config_options(CompensationConfig, (COMPENSATION,))


def add_compensation_options(parser: ArgumentParser) -> None:
    """`--compensate` and one option per `CompensationConfig` field."""
    group_title = "compensation (training-free refit of the narrowed projections; CompensationConfig fields)"
    parser.add_argument("--compensate", action="store_true",
                        help="after pruning, refit the kept weights of every narrowed attention and MLP output "
                        "projection on the calibration text (see --compensation-alpha)")
    add_config_options(parser, compensation_options(), group_title)


def compensation_config(args: Namespace):
    """The `CompensationConfig` of `--compensate` and its options, or None; its options without `--compensate` are
    refused (they would do nothing)."""
    from optimum_multipruner.configuration import CompensationConfig

    values = config_values(args, compensation_options()).get(COMPENSATION, {})
    if not args.compensate:
        if values:
            flags = ", ".join(option.flag for option in compensation_options() if option.path[-1] in values)
            raise ValueError(f"{flags} sets the compensation; add --compensate to compensate.")
        return None
    return CompensationConfig.from_dict(values)
