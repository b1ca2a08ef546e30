"""`optimum-cli multipruner prune`: search a pruned structure and save the pruned checkpoint.

Every `MultiPrunerConfig` field is an option (`--field-name`; the fields of `fast_search` are `--fast-search-name`),
and every `CompensationConfig` field (`--compensation-alpha`, with `--compensate`), generated from the dataclass
fields by `options.py` from the library's own `optimum_multipruner.configuration` (one copy of the classes).
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from typing import Any

from .common import (
    MultiPrunerSubcommand,
    add_model_loading_args,
    check_model_loading_args,
    check_model_source,
    load_model_and_tokenizer,
)
from .options import (
    ConfigOption,
    add_compensation_options,
    add_config_options,
    compensation_config,
    config_options,
    config_values,
)


def search_options() -> tuple[ConfigOption, ...]:
    """One option per `MultiPrunerConfig` field (and per field of its `fast_search`), in field order."""
    from optimum_multipruner.configuration import MultiPrunerConfig  # standard library only

    return config_options(MultiPrunerConfig)


def search_values(args: Namespace) -> dict[str, Any]:
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
    return config_values(args, search_options(), values)


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
        add_config_options(parser, search_options(), "search settings (MultiPrunerConfig fields)",
                           "advanced search settings")
        add_compensation_options(parser)
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
        compensation = compensation_config(args)
        values = search_values(args)
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
            shared_from=args.shared_from, compensation=compensation,
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
