"""Local-file loaders and doc functions for the offline lm-eval tasks defined next to this file.

Each task YAML here is the stock lm-eval task of the same name with only its data source swapped: `custom_dataset`
points at a loader below, which reads a local copy of the data set from the task data directory and returns the split
the stock task evaluates. Where the local format allows it the loader rebuilds the stock task's Hub schema, so the YAML
keeps the stock `doc_to_text` / `doc_to_target` / `doc_to_choice` verbatim.

The data directory comes from the task metadata key `data_dir` (lm-eval passes task metadata to `custom_dataset`;
set it with `TaskManager(metadata={"data_dir": ...})` or `lm_eval --metadata '{"data_dir": ...}'`), else from the
`MULTIPRUNER_TASK_DATA` environment variable. Its layout (paths in `TASK_FILES`) is that of the shared assets folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import datasets

TASK_DATA_ENV = "MULTIPRUNER_TASK_DATA"

# Files each offline task reads, relative to the task data directory.
TASK_FILES: dict[str, tuple[str, ...]] = {
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),  # original PIQA validation files (ybisk/piqa)
    "winogrande": ("llm-foundry-icl/winogrande.jsonl",),  # WinoGrande xl dev, partial-scoring form
    "hellaswag": ("hellaswag/hellaswag_val_subset1000.jsonl",),  # HellaSwag validation rows, Hub schema
    "arc_easy": ("llm-foundry-icl/arc_easy.jsonl",),  # ARC-Easy test, {"query", "choices", "gold"}
    "arc_challenge": ("llm-foundry-icl/arc_challenge.jsonl",),  # ARC-Challenge test, same form
}

_QUESTION_PREFIX = "Question: "
_ARC_LABELS = "ABCDEFGH"


def resolve_data_dir(data_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The task data directory: `data_dir`, else `$MULTIPRUNER_TASK_DATA`."""
    data_dir = data_dir or os.environ.get(TASK_DATA_ENV)
    if not data_dir:
        raise ValueError(
            f"No task data directory: pass `data_dir` (task metadata) or set the {TASK_DATA_ENV} environment variable."
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Task data directory {path} does not exist.")
    return path


def task_files(task: str, data_dir: Optional[Union[str, os.PathLike]] = None) -> list[Path]:
    """The local files `task` reads; raises FileNotFoundError naming the first missing one."""
    if task not in TASK_FILES:
        raise ValueError(f"No offline definition for task {task!r}; offline tasks are {sorted(TASK_FILES)}.")
    root = resolve_data_dir(data_dir)
    paths = [root / name for name in TASK_FILES[task]]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Task {task!r} needs {path}, which does not exist (task data directory {root}).")
    return paths


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _single_split(split: str, records: list[dict[str, Any]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: datasets.Dataset.from_list(records)})


def load_piqa(data_dir: Optional[str] = None, **metadata: Any) -> datasets.DatasetDict:
    """PIQA validation in the Hub schema (`goal`, `sol1`, `sol2`, `label`), strings as in the original files."""
    questions_path, labels_path = task_files("piqa", data_dir)
    questions = _read_jsonl(questions_path)
    labels = labels_path.read_text(encoding="utf-8").split()
    if len(labels) != len(questions):
        raise ValueError(f"{labels_path} has {len(labels)} labels for {len(questions)} questions in {questions_path}.")
    records = [
        {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(label)}
        for row, label in zip(questions, labels)
    ]
    return _single_split("validation", records)


def load_winogrande(data_dir: Optional[str] = None, **metadata: Any) -> datasets.DatasetDict:
    """WinoGrande xl dev as `{"context_options", "continuation", "gold"}` records (see `winogrande_*` below)."""
    (path,) = task_files("winogrande", data_dir)
    return _single_split("validation", _read_jsonl(path))


def load_hellaswag(data_dir: Optional[str] = None, **metadata: Any) -> datasets.DatasetDict:
    """HellaSwag validation rows, already in the Hub schema; the YAML applies the stock `process_docs`."""
    (path,) = task_files("hellaswag", data_dir)
    return _single_split("validation", _read_jsonl(path))


def process_hellaswag_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The stock HellaSwag preprocessing (`query`, `choices`, `gold` from the Hub columns), called as is."""
    from optimum_multipruner.compat import LM_EVAL_HELLASWAG_PROCESS_DOCS  # absolute: lm-eval loads this file alone

    return LM_EVAL_HELLASWAG_PROCESS_DOCS.load()(dataset)


def _load_arc(task: str, data_dir: Optional[str]) -> datasets.DatasetDict:
    """ARC test rows rebuilt in the Hub schema (`question`, `choices.text`, `choices.label`, `answerKey`)."""
    (path,) = task_files(task, data_dir)
    records = []
    for row in _read_jsonl(path):
        if not row["query"].startswith(_QUESTION_PREFIX):
            raise ValueError(
                f"{path}: expected queries starting with {_QUESTION_PREFIX!r}, got {row['query'][:40]!r}."
            )
        labels = list(_ARC_LABELS[: len(row["choices"])])
        records.append(
            {
                "question": row["query"][len(_QUESTION_PREFIX) :],
                "choices": {"text": row["choices"], "label": labels},
                "answerKey": labels[row["gold"]],
            }
        )
    return _single_split("test", records)


def load_arc_easy(data_dir: Optional[str] = None, **metadata: Any) -> datasets.DatasetDict:
    """ARC-Easy test set in the Hub schema."""
    return _load_arc("arc_easy", data_dir)


def load_arc_challenge(data_dir: Optional[str] = None, **metadata: Any) -> datasets.DatasetDict:
    """ARC-Challenge test set in the Hub schema."""
    return _load_arc("arc_challenge", data_dir)


# WinoGrande partial scoring, as the stock task does it: the model scores the same continuation (the sentence after
# the blank) after each context option (the sentence up to the blank, filled with one option); the gold index is
# returned by `doc_to_text`, which is how lm-eval marks a multiple-input task. The stock functions build these pieces
# from the Hub's `sentence`/`option1`/`option2`/`answer`; the local records hold them ready-made.


def winogrande_doc_to_text(doc: dict[str, Any]) -> int:
    """Index of the right context option (stock: `answer` "1"/"2" mapped to 0/1)."""
    return doc["gold"]


def winogrande_doc_to_target(doc: dict[str, Any]) -> str:
    """The shared continuation (stock: the sentence after `_`, stripped)."""
    return doc["continuation"]


def winogrande_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The context options (stock: the sentence before `_` followed by each option)."""
    return doc["context_options"]
