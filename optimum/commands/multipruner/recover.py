"""`optimum-cli multipruner recover`: distil the dense model into a pruned checkpoint (full fine-tuning or LoRA), or
into an int4 OpenVINO IR (quantization-aware, `--weight-format int4`)."""

from __future__ import annotations

import os
from argparse import ArgumentParser, Namespace
from typing import Any, Optional

from .common import DTYPES, MultiPrunerSubcommand, check_model_source
from .options import ConfigOption, add_config_options, config_options, config_values


def recovery_options() -> tuple[ConfigOption, ...]:
    """One option per `RecoveryConfig` field, `--weight-format`, `--group-size` and `--ratio` (the names
    optimum-cli export openvino gives the int4 settings) as aliases of its quantization fields."""
    from optimum_multipruner.recovery.configuration import RecoveryConfig  # standard library only

    return config_options(RecoveryConfig)


class RecoverCommand(MultiPrunerSubcommand):
    HELP = ("Recover a pruned model's quality by distillation from the dense model (transformers Trainer; runs "
            "under torchrun / accelerate launch too).")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("-m", "--model", required=True, help="pruned checkpoint folder (from `prune` or `export`)")
        parser.add_argument("output", help="folder of the recovered checkpoint")
        parser.add_argument("--config", help="recovery_config.json with any RecoveryConfig fields (options override)")
        add_config_options(parser, recovery_options(), "recovery settings (RecoveryConfig fields)")
        parser.add_argument("--checkpoint-dir", help="folder of resumable checkpoints (default: none are written)")
        parser.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir")
        parser.add_argument("--dtype", choices=DTYPES, default="float32",
                            help="dtype to load student and teacher in (default float32; see --bf16 for mixed precision)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")

    def execute(self) -> None:
        args = self.args
        from optimum_multipruner import MultiPruner
        from optimum_multipruner.recovery import RecoveryConfig
        from optimum_multipruner.utils import check_output_dir

        config = RecoveryConfig.from_dict(recovery_values(args))
        check_model_source(args.model)
        if config.teacher is None:
            raise ValueError("Give the dense model to distil from with --teacher (or `teacher` in --config).")
        check_model_source(config.teacher)
        check_output_dir(args.output, args.overwrite)
        check_recovery_paths(args.model, config.teacher, args.output, args.checkpoint_dir)
        if args.resume and not args.checkpoint_dir:
            raise ValueError("--resume continues the run in --checkpoint-dir; give that folder.")
        import torch

        dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        pruner = MultiPruner.from_pretrained(args.model, dtype=dtype)
        pruner.recover(config, checkpoint_dir=args.checkpoint_dir, resume=args.resume)
        from optimum_multipruner.distributed import is_main_process

        if config.quantization is None:
            pruner.save_pretrained(args.output, overwrite=args.overwrite)
        elif is_main_process():  # the trained int4 weights live in the IR
            from optimum_multipruner.exporters import export_openvino

            export_openvino(pruner.model, args.output, overwrite=args.overwrite, tokenizer=pruner.tokenizer,
                            record=pruner.record)
        if is_main_process():
            tokens = pruner.record.recovery["tokens_seen"] if pruner.record is not None else config.max_tokens
            kind = "an int4 OpenVINO IR in" if config.quantization else "saved to"
            print(f"Recovered {args.model} on {tokens:,} tokens; {kind} {args.output}")


def _within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_recovery_paths(model: str, teacher: str, output: str, checkpoint_dir: Optional[str]) -> None:
    """Refuse, before anything loads, folders that would overwrite what the run reads or writes: the output in place
    of the pruned model or the teacher (even with --overwrite), and checkpoints inside the output (replacing the
    output would delete them) or inside a model folder."""
    for role, folder in (("pruned model", model), ("teacher", teacher)):
        if os.path.realpath(output) == os.path.realpath(folder):
            raise ValueError(f"The output {output} is the {role}'s folder, which the run reads: choose another "
                             "output folder (--overwrite cannot replace the model it trains from).")
    if checkpoint_dir is None:
        return
    if _within(checkpoint_dir, output):
        raise ValueError(f"The checkpoint folder {checkpoint_dir} is inside the output {output}, which the saved "
                         "model replaces: choose a checkpoint folder outside it.")
    for role, folder in (("pruned model", model), ("teacher", teacher)):
        if os.path.isdir(folder) and _within(checkpoint_dir, folder):
            raise ValueError(f"The checkpoint folder {checkpoint_dir} is inside the {role}'s folder {folder}: "
                             "choose a folder of its own.")


def recovery_values(args: Namespace) -> dict[str, Any]:
    """RecoveryConfig fields: `--config`'s, overridden by the options given on the command line."""
    from optimum_multipruner.utils import read_json

    values: dict[str, Any] = {}
    if args.config:
        if not os.path.isfile(args.config):
            raise FileNotFoundError(f"The recovery config {args.config} does not exist; check the path.")
        values = read_json(args.config)
        if not isinstance(values, dict):
            raise ValueError(f"{args.config} must hold a JSON object of RecoveryConfig fields.")
    values = config_values(args, recovery_options(), values)
    if isinstance(values.get("dataset"), tuple):  # one source stays a string
        values["dataset"] = values["dataset"][0] if len(values["dataset"]) == 1 else list(values["dataset"])
    if isinstance(values.get("dataset_weights"), tuple):
        values["dataset_weights"] = list(values["dataset_weights"])
    targets = values.get("lora_target_modules")
    if isinstance(targets, tuple):  # one word (all-linear) stays a string, as PEFT takes it
        values["lora_target_modules"] = targets[0] if len(targets) == 1 and targets[0] == "all-linear" else list(targets)
    missing = [name for name in ("dataset", "max_tokens") if name not in values]
    if missing:
        raise ValueError(f"Give {' and '.join('--' + name.replace('_', '-') for name in missing)} (or set them in "
                         "--config).")
    return values
