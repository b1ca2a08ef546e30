"""`optimum-cli multipruner evaluate`: perplexity and zero-shot accuracy of a PyTorch checkpoint or an OpenVINO IR."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from typing import Any, Optional

from optimum_multipruner_constants import OPENVINO_MODEL_FILES

from .common import (
    MultiPrunerSubcommand,
    add_model_loading_args,
    check_model_source,
    load_model_and_tokenizer,
    parse_list,
)

SKIP = "none"


def parse_tasks(value: str) -> tuple[str, ...]:
    """Comma-separated lm-eval task names; `none` for no zero-shot evaluation."""
    return () if value.strip().lower() == SKIP else parse_list(value)


def is_openvino_dir(model: str) -> bool:
    return os.path.isfile(os.path.join(model, OPENVINO_MODEL_FILES[0]))


def load_for_evaluation(args) -> tuple[Any, Any]:
    """An `OVModelForCausalLM` for an OpenVINO IR folder (on the OpenVINO device `--openvino-device`), else the
    PyTorch causal LM (`--device`, `--dtype`, ...); and the tokenizer saved with it."""
    if not is_openvino_dir(args.model):
        return load_model_and_tokenizer(args)
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    model = OVModelForCausalLM.from_pretrained(args.model, device=args.openvino_device)
    return model, AutoTokenizer.from_pretrained(args.model)


class EvaluateCommand(MultiPrunerSubcommand):
    HELP = "Evaluate a (pruned or dense) PyTorch checkpoint or OpenVINO IR: perplexity and zero-shot accuracy."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "-m", "--model", required=True,
            help=f"PyTorch checkpoint folder or Hub id, or OpenVINO IR folder (with {OPENVINO_MODEL_FILES[0]})",
        )
        parser.add_argument(
            "--perplexity-dataset", default="wikitext2",
            help="wikitext2, ptb, c4 (Hub) or a local .txt/.json/.jsonl/.parquet file (default wikitext2); "
            f"'{SKIP}' skips perplexity",
        )
        parser.add_argument("--sequence-length", type=int, default=2048, help="tokens per window (default 2048)")
        parser.add_argument("--max-windows", type=int, help="evaluate only the first windows (default all)")
        parser.add_argument(
            "--tasks", type=parse_tasks, metavar="TASKS",
            help="comma-separated lm-eval tasks (default piqa,winogrande,hellaswag,arc_easy,arc_challenge); "
            f"'{SKIP}' skips zero-shot",
        )
        parser.add_argument("--limit", type=int, help="score only the first items of each task (default all)")
        parser.add_argument(
            "--task-data-dir",
            help="local copies of the task data sets (default $MULTIPRUNER_TASK_DATA; neither: the Hub)",
        )
        parser.add_argument("--batch-size", type=int, default=1, help="sequences per forward pass (default 1)")
        add_model_loading_args(parser)
        parser.add_argument(
            "--openvino-device", default="CPU", help="OpenVINO device of an IR: CPU, GPU, NPU, AUTO, ... (default CPU)"
        )
        parser.add_argument("--output", help="write the results as JSON to this file")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")

    def execute(self) -> None:
        args = self.args
        tasks_given: Optional[tuple[str, ...]] = args.tasks
        dataset: Optional[str] = None if args.perplexity_dataset.lower() == SKIP else args.perplexity_dataset
        if dataset is None and tasks_given == ():
            raise ValueError(f"Nothing to evaluate: --perplexity-dataset and --tasks are both '{SKIP}'.")
        from optimum_multipruner.utils import check_output_file

        check_output_file(args.output, args.overwrite)
        check_model_source(args.model)
        from optimum_multipruner.evaluation import (
            DEFAULT_TASKS,
            evaluate_perplexity,
            evaluate_zero_shot,
            format_results_table,
            write_results_json,
        )

        tasks = DEFAULT_TASKS if tasks_given is None else tasks_given
        model, tokenizer = load_for_evaluation(args)
        results = []
        if dataset is not None:
            results.append(
                evaluate_perplexity(
                    model, tokenizer, dataset, sequence_length=args.sequence_length, max_windows=args.max_windows,
                    batch_size=args.batch_size, progress=not args.no_progress,
                )
            )
        if tasks:
            results.append(
                evaluate_zero_shot(
                    model, tokenizer, tasks, limit=args.limit, batch_size=args.batch_size, data_dir=args.task_data_dir
                )
            )
        print(format_results_table(results))
        if args.output:
            backend = "openvino" if is_openvino_dir(args.model) else "pytorch"
            write_results_json({"model": args.model, "backend": backend, "results": results}, args.output)
