"""`optimum-cli multipruner prune`: search a pruned structure and save the pruned checkpoint."""

from __future__ import annotations

import json
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any, Callable

from optimum.commands.base import BaseOptimumCLICommand


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ArgumentTypeError(f"expected true or false, got {value!r}")


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(part) for part in value.split(","))


def _words(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


# One option per `MultiPrunerConfig` field (the field name in kebab-case): (field, parser, metavar, help).
# Listed here rather than read from the dataclass so that building the parser does not import the library.
CONFIG_OPTIONS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    ("target_ratio", float, "R", "share of all parameters to remove, in (0, 1) (default 0.2)"),
    ("pruning_distribution", _floats, "B,M,A", "block, MLP-channel, attention-head budgets (default 44,52,4)"),
    ("mlp_channel_group_size", int, "N", "MLP channels removed per step (default 1024)"),
    ("attn_channel_group_size", int, "N", "query channels removed per attention step (default: one KV group)"),
    ("width_alignment", int, "N", "MLP group sizes must be multiples of it (default 128)"),
    ("weight_reorder", _bool, "BOOL", "reorder channels/heads by weight magnitude first (default true)"),
    ("calibration_dataset", str, "NAME_OR_FILE", "alpaca, wikitext2, ptb, c4, a Hub data set or a local file"),
    ("calibration_text_column", str, "COLUMN", "text column of table-like data sets (default text)"),
    ("num_calibration_samples_block", int, "N", "calibration rows of the block stage (default 256)"),
    ("num_calibration_samples_width", int, "N", "calibration rows of the width stages (default 128)"),
    ("sequence_length", int, "N", "tokens per calibration sequence (default 2048)"),
    ("batch_size", int, "N", "sequences per forward pass (default 2)"),
    ("seed", int, "N", "seed of the calibration sampling (default 42)"),
    ("block_types", _words, "TYPES", "sub-blocks the block stage may remove: attention,mlp (default both)"),
    ("accelerated_search", _bool, "BOOL", "cached hidden states + early stopping, same choices (default true)"),
    ("max_steps", int, "N", "stop after this many greedy steps even below the target ratio (BlockPruner's blocks)"),
)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def config_values(args) -> dict[str, Any]:
    """The `MultiPrunerConfig` fields given on the command line (over those of `--config`)."""
    values: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            values = json.load(handle)
    for name, *_ in CONFIG_OPTIONS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return values


def add_model_loading_args(parser: ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load the model in")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")


def load_model_and_tokenizer(model_name_or_path: str, dtype: str, device: str):
    """The dense (or pruned) causal LM in eval mode on `device`, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import optimum_multipruner  # noqa: F401  (registers the pruned model types)

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_name_or_path)


class PruneCommand(BaseOptimumCLICommand):
    HELP = "Prune a Hugging Face causal LM (MultiPruner or BlockPruner search) and save the pruned checkpoint."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("-m", "--model", required=True, help="dense model directory or Hub id")
        parser.add_argument("output", help="directory of the pruned checkpoint")
        parser.add_argument("--config", help="MultiPrunerConfig JSON file; options given here override it")
        parser.add_argument(
            "--blockpruner", action="store_true",
            help="BlockPruner: remove whole attention/MLP sub-blocks only (128 block calibration rows by default)",
        )
        group = parser.add_argument_group("search settings (MultiPrunerConfig fields)")
        for name, kind, metavar, text in CONFIG_OPTIONS:
            group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, metavar=metavar, help=text)
        add_model_loading_args(parser)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
        parser.add_argument(
            "--checkpoint-dir", help="write the search progress here after every step, so it can be resumed"
        )
        parser.add_argument("--resume", metavar="CHECKPOINT_DIR", help="resume the interrupted search saved there")

    def run(self) -> None:
        from optimum_multipruner import MultiPruner, MultiPrunerConfig, count_parameters
        from optimum_multipruner.utils import check_output_dir

        args = self.args
        check_output_dir(args.output, args.overwrite)  # fail before loading anything
        values = config_values(args)
        if args.blockpruner:
            if "pruning_distribution" in values:
                raise ValueError("--blockpruner fixes the pruning distribution to blocks only; drop the distribution.")
            config = MultiPrunerConfig.blockpruner(**values)
        else:
            config = MultiPrunerConfig.from_dict(values)
        model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.device)
        pruner = MultiPruner(model, tokenizer)
        pruner.prune(
            config, progress=not args.no_progress, checkpoint_dir=args.checkpoint_dir, resume_from=args.resume
        )
        pruner.save_pretrained(args.output, overwrite=args.overwrite)
        record = pruner.record
        kept = count_parameters(model)
        print(
            f"Pruned {args.model}: {record.dense_parameters:,} -> {kept:,} parameters "
            f"({100 * (1 - kept / record.dense_parameters):.2f}% removed, {len(record.steps)} steps). "
            f"Saved to {args.output}"
        )
