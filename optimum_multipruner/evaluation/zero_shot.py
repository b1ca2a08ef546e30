"""Zero-shot accuracy through lm-eval-harness, by the BlockPruner / MultiPruner protocol.

Tasks PIQA, WinoGrande, HellaSwag, ARC-Easy and ARC-Challenge, 0-shot; per task `acc_norm` where the task reports it,
else `acc` (so `acc` for WinoGrande), with lm-eval's standard error; the score is the plain mean over tasks, and its
standard error `sqrt(sum of the squared task errors) / number of tasks` (tasks scored on independent items).

Two data sources:
- offline: the task definitions shipped in `tasks/` (the stock lm-eval tasks of the same names, reading local copies of
  the data sets from a task data directory: `data_dir` or `$MULTIPRUNER_TASK_DATA`);
- online: the stock lm-eval tasks, which download their data sets from the Hugging Face Hub.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..compat import LM_EVAL_HFLM, LM_EVAL_SIMPLE_EVALUATE, LM_EVAL_TASK_MANAGER
from ..utils import get_logger
from .common import evaluation_mode
from .tasks.utils import TASK_DATA_ENV, resolve_data_dir, task_files

logger = get_logger(__name__)

DEFAULT_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")
OFFLINE_TASKS_DIR = Path(__file__).parent / "tasks"
METRIC_PREFERENCE = ("acc_norm", "acc")


def evaluate_zero_shot(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    limit: Optional[int] = None,
    batch_size: int = 1,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    offline: Optional[bool] = None,
    add_bos_token: Optional[bool] = False,
) -> dict[str, Any]:
    """0-shot accuracy of `model` (a PyTorch causal LM or an OpenVINO `OVModelForCausalLM`) on lm-eval `tasks`.

    `limit` scores only the first items of each task. `offline=None` reads local data when a task data directory is
    known (`data_dir` or `$MULTIPRUNER_TASK_DATA`) and the Hugging Face Hub otherwise (`True` / `False` force one);
    offline runs support the five `DEFAULT_TASKS`. `add_bos_token=False` encodes prompts without a BOS token, as
    lm-eval 0.4.0 / 0.4.2 (used by BlockPruner / MultiPruner) did for causal LMs; `None` follows the tokenizer, as
    newer lm-eval does by default.
    """
    try:
        import lm_eval

        HFLM, TaskManager, simple_evaluate = (
            name.load() for name in (LM_EVAL_HFLM, LM_EVAL_TASK_MANAGER, LM_EVAL_SIMPLE_EVALUATE)
        )
    except ImportError as error:
        raise ImportError(
            "Zero-shot evaluation needs lm-eval-harness: `pip install optimum-multipruner[eval]`."
        ) from error

    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"`tasks` must be a non-empty list of distinct task names, got {tasks}.")
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be at least 1 (or None for all items), got {limit}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    if offline is None:
        offline = bool(data_dir or os.environ.get(TASK_DATA_ENV))

    if offline:
        root = resolve_data_dir(data_dir)
        for task in tasks:
            task_files(task, root)
        local_data_dir = str(root)
        task_manager = TaskManager(
            include_path=str(OFFLINE_TASKS_DIR), include_defaults=False, metadata={"data_dir": local_data_dir}
        )
    else:
        local_data_dir = None
        task_manager = TaskManager()
        unknown = [task for task in tasks if task not in task_manager.all_subtasks]
        if unknown:
            raise ValueError(f"Unknown lm-eval task(s) {unknown}.")

    logger.info(
        "Zero-shot evaluation on %s (%s data, limit %s, batch size %d).",
        ", ".join(tasks),
        f"local {local_data_dir}" if offline else "Hub",
        limit,
        batch_size,
    )
    start = time.perf_counter()
    with evaluation_mode(model):
        # lm-eval may set a pad token on the tokenizer it gets; give it a copy so the caller's tokenizer is untouched.
        lm = HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            backend="causal",
            batch_size=batch_size,
            add_bos_token=add_bos_token,
        )
        output = simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=0,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
            random_seed=None,  # loglikelihood scoring draws nothing at random; leave the global generators alone
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    seconds = time.perf_counter() - start

    per_task = {task: _task_result(task, output) for task in tasks}
    mean = sum(result["value"] for result in per_task.values()) / len(per_task)
    errors = [result["stderr"] for result in per_task.values()]
    mean_stderr = None if None in errors else math.sqrt(sum(error**2 for error in errors)) / len(errors)
    logger.info("Zero-shot mean over %d tasks: %.4f (%.1f s).", len(per_task), mean, seconds)
    return {
        "kind": "zero_shot",
        "tasks": per_task,
        "mean": mean,
        "mean_stderr": mean_stderr,
        "metric_rule": "acc_norm where the task reports it, else acc; plain mean over tasks",
        "num_fewshot": 0,
        "limit": limit,
        "batch_size": batch_size,
        "add_bos_token": add_bos_token,
        "data": "local" if offline else "hub",
        "data_dir": local_data_dir,
        "lm_eval_version": lm_eval.__version__,
        "seconds": seconds,
    }


def _task_result(task: str, output: dict[str, Any]) -> dict[str, Any]:
    """One task's chosen metric, its standard error, all its metrics and its item counts from lm-eval's output."""
    # lm-eval keys metrics as "<metric>,<filter>" ("acc,none", "acc_stderr,none") next to "alias", "name", ...
    metrics = {name.split(",")[0]: value for name, value in output["results"][task].items() if "," in name}
    metric = next((name for name in METRIC_PREFERENCE if name in metrics), None)
    if metric is None:
        raise ValueError(f"Task {task!r} reports none of {METRIC_PREFERENCE}; its metrics are {sorted(metrics)}.")
    counts = output["n-samples"][task]
    stderr = metrics.get(f"{metric}_stderr")
    return {
        "metric": metric,
        "value": metrics[metric],
        "stderr": stderr if isinstance(stderr, (int, float)) else None,  # lm-eval reports "N/A" for a single item
        "metrics": metrics,
        "num_items": counts["effective"],
        "num_items_available": counts["original"],
    }
