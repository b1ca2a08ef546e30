"""Saving evaluation results as JSON and showing them as a plain-text table."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence, Union

from ..utils import atomic_write_text

Results = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]


def write_results_json(results: Any, path: Union[str, os.PathLike]) -> None:
    """Write `results` (any JSON-serializable value, e.g. evaluation result dicts) to `path` atomically."""
    text = json.dumps(results, indent=2) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)


def format_results_table(results: Results) -> str:
    """A plain-text table of one evaluation result or a list of them (from `evaluate_perplexity` and
    `evaluate_zero_shot`)."""
    rows = [("metric", "value", "evaluated on")]
    for result in [results] if isinstance(results, Mapping) else results:
        rows.extend(_result_rows(result))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _result_rows(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    kind = result.get("kind")
    if kind == "perplexity":
        return [
            (
                f"{result['protocol']} perplexity",
                f"{result['perplexity']:.4f}",
                f"{result['num_windows']}/{result['num_windows_available']} windows of {result['sequence_length']} "
                f"tokens ({result['dataset']})",
            )
        ]
    if kind == "zero_shot":
        rows = [
            (
                f"{task} {task_result['metric']}",
                f"{task_result['value']:.4f}",
                f"{task_result['num_items']}/{task_result['num_items_available']} items",
            )
            for task, task_result in result["tasks"].items()
        ]
        rows.append(
            ("zero-shot mean", f"{result['mean']:.4f}", f"{len(result['tasks'])} tasks, {result['data']} data")
        )
        return rows
    raise ValueError(f"Not an evaluation result (its `kind` is {kind!r}); expected 'perplexity' or 'zero_shot'.")
