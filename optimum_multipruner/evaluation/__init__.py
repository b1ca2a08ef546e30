"""Evaluation of dense and pruned models (PyTorch or OpenVINO) by the BlockPruner / MultiPruner protocol:
perplexity (`evaluate_perplexity`) and lm-eval-harness zero-shot accuracy (`evaluate_zero_shot`)."""

from .perplexity import PERPLEXITY_PROTOCOLS, PerplexityProtocol, evaluate_perplexity
from .reporting import format_results_table, write_results_json
from .tasks.utils import TASK_DATA_ENV
from .zero_shot import DEFAULT_TASKS, evaluate_zero_shot

__all__ = [
    "DEFAULT_TASKS",
    "PERPLEXITY_PROTOCOLS",
    "PerplexityProtocol",
    "TASK_DATA_ENV",
    "evaluate_perplexity",
    "evaluate_zero_shot",
    "format_results_table",
    "write_results_json",
]
