"""`optimum-cli export openvino-pruned` (`optimum/commands/multipruner/export_openvino.py`): what the export of a
`multipruner_<family>` checkpoint adds around the stock `OVExportCommand.run`."""

from __future__ import annotations

from typing import Any, Callable

from . import TASKS, finish_export


def prepare_openvino_export_args(args) -> None:
    """Adjust the parsed `optimum-cli export openvino` arguments of a pruned checkpoint: register the export configs,
    default the task to `text-generation-with-past`, pick the weight format from the *dense* size
    (`openvino.default_weight_format`) and let int4 adjust group sizes that do not divide pruned widths."""
    from transformers import AutoConfig

    from .openvino import default_weight_format, register_openvino_export

    register_openvino_export()
    if args.task == "auto":
        args.task = TASKS[-1]
    if args.weight_format is None and args.quant_mode is None:
        args.weight_format = default_weight_format(AutoConfig.from_pretrained(args.model, cache_dir=args.cache_dir))
    if args.weight_format == "int4" and args.group_size_fallback is None:
        args.group_size_fallback = "adjust"


def run_openvino_export_command(run: Callable[[Any], Any], command) -> Any:
    """`optimum-cli export openvino-pruned` of a pruned checkpoint:
    [`prepare_openvino_export_args`], the stock `run`, then the IR folder gets the base model type and the pruning
    record ([`finish_export`])."""
    prepare_openvino_export_args(command.args)
    result = run(command)
    finish_export(command.args.output, source=command.args.model, cache_dir=command.args.cache_dir)
    return result
