"""`optimum-cli multipruner prune`: search a pruned structure and save the pruned checkpoint.

Every `MultiPrunerConfig` field is an option (`--field-name`), built from the dataclass's source: optimum-cli builds the
parsers at every start-up, when the library (torch) must not be imported, so the fields, their types, defaults and the
first sentence of their docstring entries are read with `ast` from `optimum_multipruner/configuration.py`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
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

CONFIG_MODULE, CONFIG_CLASS = "configuration.py", "MultiPrunerConfig"
_SCALARS: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (int, "N"), "float": (float, "X"), "str": (str, "TEXT"), "bool": (parse_bool, "BOOL")
}
_DOC_ENTRY = re.compile(r"(\w+) \(.*?\):\s*(.*)")
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z\"'(])")  # not after "e.g." or "i.e." (lower case follows)
NONE = "none"  # typed for an optional field: set it to None (an option left out keeps the default or --config value)


@dataclass(frozen=True)
class ConfigOption:
    """A `MultiPrunerConfig` field as an option of `prune`."""

    name: str
    parse: Callable[[str], Any]
    metavar: Optional[str]
    help: str
    choices: Optional[tuple[Any, ...]] = None

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


def _without_none(node: ast.expr) -> ast.expr:
    """`X` of `Optional[X]`, `Union[X, None]` and `X | None`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [node.left, node.right]
    elif isinstance(node, ast.Subscript) and ast.unparse(node.value).split(".")[-1] in ("Optional", "Union"):
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    else:
        return node
    parts = [part for part in parts if not (isinstance(part, ast.Constant) and part.value is None)]
    return parts[0] if len(parts) == 1 else node


class _OrNone:
    """Parser of an optional field: `none` (returned as `NONE`, which `config_values` turns into None) or an item."""

    def __init__(self, item: Callable[[str], Any]) -> None:
        self.item = item
        self.__name__ = getattr(item, "__name__", "value")

    def __call__(self, text: str) -> Any:
        return NONE if text.strip().lower() == NONE else self.item(text)


def _option_type(annotation: ast.expr) -> tuple[Callable[[str], Any], Optional[str], Optional[tuple[Any, ...]]]:
    """Parser, metavar and choices for a field annotation: `int`/`float`/`str`/`bool`, optional (`none` sets None)
    or not; `tuple[X, ...]` / `tuple[X, X]` (comma-separated); `Literal[...]` (choices). Other types are passed on as
    text, for `MultiPrunerConfig.validate` to check."""
    node = _without_none(annotation)
    if node is not annotation:
        parse, metavar, choices = _option_type(node)
        return _OrNone(parse), f"{metavar}|{NONE}" if metavar else metavar, choices and choices + (NONE,)
    if isinstance(node, ast.Name) and node.id in _SCALARS:
        return (*_SCALARS[node.id], None)
    if isinstance(node, ast.Subscript):
        base = ast.unparse(node.value).split(".")[-1]
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Literal":
            choices = tuple(ast.literal_eval(item) for item in items)
            return type(choices[0]), None, choices
        if base in ("tuple", "Tuple"):
            parse, metavar, _ = _option_type(items[0])
            return _CommaSeparated(parse), f"{metavar},...", None
    return str, "VALUE", None


def _field_docs(docstring: str) -> dict[str, str]:
    """First sentence of each `name (type): text` entry of a Google-style `Args:` section."""
    docs: dict[str, list[str]] = {}
    entry_indent, current = None, None
    lines = docstring.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    for line in lines[start:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry_indent = indent if entry_indent is None else entry_indent
        match = _DOC_ENTRY.fullmatch(line.strip())
        if indent < entry_indent:
            break
        if indent == entry_indent and match:
            current = match.group(1)
            docs[current] = [match.group(2)]
        elif current is not None:
            docs[current].append(line.strip())
    texts = {name: " ".join(parts).replace("`", "").replace("**", "") for name, parts in docs.items()}
    return {name: _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".") for name, text in texts.items()}


def _default_text(value: Optional[ast.expr]) -> Optional[str]:
    """The field's default as it is typed on the command line, or None (no default, None, or not a literal)."""
    if isinstance(value, ast.Call):  # dataclasses.field(default=...)
        value = next((keyword.value for keyword in value.keywords if keyword.arg == "default"), None)
    try:
        default = ast.literal_eval(value) if value is not None else None
    except ValueError:
        return None
    if default is None:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (tuple, list)):
        return ",".join(str(item) for item in default)
    return str(default)


def config_options() -> tuple[ConfigOption, ...]:
    """One option per `MultiPrunerConfig` field, in field order, read from the source without importing it."""
    spec = importlib.util.find_spec("optimum_multipruner")  # locates the package; imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("optimum_multipruner is not installed.")
    path = os.path.join(next(iter(spec.submodule_search_locations)), CONFIG_MODULE)
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    config_class = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == CONFIG_CLASS)
    docs = _field_docs(ast.get_docstring(config_class) or "")
    options = []
    for node in config_class.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            continue
        parse, metavar, choices = _option_type(node.annotation)
        default = _default_text(node.value)
        text = docs.get(node.target.id, "")
        options.append(ConfigOption(
            name=node.target.id, parse=parse, metavar=metavar, choices=choices,
            help=f"{text} (default {default})" if default is not None else text,
        ))
    return tuple(options)


def config_values(args, options: tuple[ConfigOption, ...]) -> dict[str, Any]:
    """The `MultiPrunerConfig` fields of `--config` with those given as options over them."""
    values: dict[str, Any] = {}
    if args.config:
        from optimum_multipruner.utils import read_json

        values = read_json(args.config)
        if not isinstance(values, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of MultiPrunerConfig fields.")
    for option in options:
        value = getattr(args, option.name)
        if value is not None:
            values[option.name] = None if value == NONE else value
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
        for option in config_options():
            group.add_argument(option.flag, dest=option.name, type=option.parse, metavar=option.metavar,
                               choices=option.choices, help=option.help)
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
