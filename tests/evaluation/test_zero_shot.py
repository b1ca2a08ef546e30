"""The offline lm-eval task definitions and `evaluate_zero_shot`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402
from lm_eval.tasks.hellaswag.utils import preprocess as stock_hellaswag_preprocess  # noqa: E402
from lm_eval.tasks.winogrande import preprocess_winogrande as stock_winogrande  # noqa: E402

from optimum_multipruner.evaluation import DEFAULT_TASKS, evaluate_zero_shot, format_results_table  # noqa: E402
from optimum_multipruner.evaluation.zero_shot import OFFLINE_TASKS_DIR  # noqa: E402

STOCK_TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"
STOCK_YAML = {
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
}
NUM_CHECKED_ITEMS = 5


def read_jsonl(path: Path, count: int = NUM_CHECKED_ITEMS) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:count]]


def load_offline_tasks(data_dir: Path) -> dict:
    manager = TaskManager(
        include_path=str(OFFLINE_TASKS_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)}
    )
    return manager.load(list(DEFAULT_TASKS))["tasks"]


@pytest.fixture(scope="module")
def offline_tasks(task_data):
    """The offline tasks on the task data written in code, then on the real assets."""
    return load_offline_tasks(task_data)


def requests_and_gold(task) -> list[tuple[list[tuple[str, str]], int]]:
    """The (context, continuation) pairs lm-eval builds for the first items, and each item's gold index."""
    task.build_all_requests(limit=NUM_CHECKED_ITEMS)
    items = {}
    for instance in sorted(task.instances, key=lambda instance: (instance.doc_id, instance.idx)):
        items.setdefault(instance.doc_id, []).append(tuple(instance.arguments))
    docs = list(task.eval_docs)
    gold = [task.doc_to_text(docs[i]) if task.multiple_input else task.doc_to_target(docs[i]) for i in sorted(items)]
    return list(zip([items[i] for i in sorted(items)], gold))


def test_offline_tasks_keep_stock_prompts_and_metrics():
    compared = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "target_delimiter")
    for task, stock_path in STOCK_YAML.items():
        ours = load_yaml(OFFLINE_TASKS_DIR / f"{task}.yaml", resolve_func=False)
        stock = load_yaml(STOCK_TASKS_DIR / stock_path, resolve_func=False)
        assert ours["task"] == task
        if task == "winogrande":  # same scoring, but the doc functions read the local (ready-split) records
            compared_here = ("output_type", "metric_list")
        else:
            compared_here = compared
        for key in compared_here:
            assert ours.get(key) == stock.get(key), (task, key)


def test_offline_piqa_matches_source_files(offline_tasks, task_data):
    rows = read_jsonl(task_data / "piqa" / "valid.jsonl")
    labels = (task_data / "piqa" / "valid-labels.lst").read_text().split()
    expected = [
        ([(f"Question: {row['goal']}\nAnswer:", f" {row[solution]}") for solution in ("sol1", "sol2")], int(label))
        for row, label in zip(rows, labels)
    ]
    assert requests_and_gold(offline_tasks["piqa"]) == expected
    assert len(offline_tasks["piqa"].eval_docs) == len(labels)  # 1838 in the real data


def test_offline_arc_matches_source_files(offline_tasks, task_data):
    for task in ("arc_easy", "arc_challenge"):
        rows = read_jsonl(task_data / "llm-foundry-icl" / f"{task}.jsonl")
        expected = [
            ([(f"{row['query']}\nAnswer:", f" {choice}") for choice in row["choices"]], row["gold"]) for row in rows
        ]
        assert requests_and_gold(offline_tasks[task]) == expected


def test_offline_hellaswag_matches_source_file(offline_tasks, task_data):
    rows = read_jsonl(task_data / "hellaswag" / "hellaswag_val_subset1000.jsonl")
    expected = []
    for row in rows:
        query = stock_hellaswag_preprocess(
            row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize()
        )
        expected.append(
            ([(query, f" {stock_hellaswag_preprocess(ending)}") for ending in row["endings"]], row["label"])
        )
    assert requests_and_gold(offline_tasks["hellaswag"]) == expected


def test_offline_winogrande_matches_source_file_and_stock_scoring(offline_tasks, task_data):
    rows = read_jsonl(task_data / "llm-foundry-icl" / "winogrande.jsonl")
    expected = [
        ([(context, f" {row['continuation']}") for context in row["context_options"]], row["gold"]) for row in rows
    ]
    built = requests_and_gold(offline_tasks["winogrande"])
    assert built == expected

    # The stock functions on the Hub records of the first two items build the same requests (partial scoring).
    hub_records = [
        {
            "sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "2",
        },
        {
            "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "1",
        },
    ]
    for record, (requests, gold) in zip(hub_records, built):
        continuation = stock_winogrande.doc_to_target(record)
        assert requests == [(context, f" {continuation}") for context in stock_winogrande.doc_to_choice(record)]
        assert gold == stock_winogrande.doc_to_text(record)


def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) as lm-eval scores it: the context's trailing spaces move to the continuation,
    the pair is encoded at once (no special tokens) and the continuation is what follows the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    start = len(tokenizer(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
    return sum(log_probs[position - 1, whole[position]].item() for position in range(start, len(whole)))


def accuracy_by_hand(model, tokenizer, task, limit: int) -> float:
    """acc_norm (acc for WinoGrande) of the first `limit` items: the gold index must have the highest log-likelihood,
    divided by the choice's length in characters for acc_norm."""
    correct = 0
    for requests, gold in requests_and_gold(task)[:limit]:
        scores = [loglikelihood(model, tokenizer, context, continuation) for context, continuation in requests]
        if not task.multiple_input:  # acc_norm; the continuation is the choice after the target delimiter " "
            scores = [score / (len(continuation) - 1) for score, (_, continuation) in zip(scores, requests)]
        correct += max(range(len(scores)), key=scores.__getitem__) == gold
    return correct / limit


def test_tiny_model_zero_shot(tiny_llama, tiny_tokenizer, built_task_data):
    result = evaluate_zero_shot(tiny_llama, tiny_tokenizer, limit=4, data_dir=built_task_data)
    tasks = load_offline_tasks(built_task_data)
    assert list(result["tasks"]) == list(DEFAULT_TASKS)
    for task, task_result in result["tasks"].items():
        assert task_result["metric"] == ("acc" if task == "winogrande" else "acc_norm")
        assert task_result["value"] == pytest.approx(accuracy_by_hand(tiny_llama, tiny_tokenizer, tasks[task], 4))
        assert task_result["num_items"] == 4
    assert result["tasks"]["piqa"]["num_items_available"] == 6
    assert len({task_result["value"] for task_result in result["tasks"].values()}) > 1  # not all one value
    assert result["mean"] == pytest.approx(statistics.fmean(r["value"] for r in result["tasks"].values()))
    assert (result["data"], result["num_fewshot"], result["limit"]) == ("local", 0, 4)
    assert tiny_tokenizer.pad_token is None  # lm-eval worked on a copy of the tokenizer
    assert "arc_challenge acc_norm" in format_results_table(result)


def test_openvino_model_matches_pytorch(tiny_llama, tiny_openvino_llama, tiny_tokenizer, built_task_data):
    settings = dict(tasks=["arc_easy", "winogrande"], limit=3, batch_size=2, data_dir=built_task_data)
    reference = evaluate_zero_shot(tiny_llama, tiny_tokenizer, **settings)
    openvino = evaluate_zero_shot(tiny_openvino_llama, tiny_tokenizer, **settings)
    for task in settings["tasks"]:
        assert openvino["tasks"][task]["metrics"] == reference["tasks"][task]["metrics"]


def test_data_dir_from_environment(tiny_llama, tiny_tokenizer, built_task_data, monkeypatch):
    monkeypatch.setenv("MULTIPRUNER_TASK_DATA", str(built_task_data))
    result = evaluate_zero_shot(tiny_llama, tiny_tokenizer, tasks=["piqa"], limit=1)
    assert (result["data"], result["data_dir"]) == ("local", str(built_task_data))


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"tasks": ["boolq"]}, ValueError, "No offline definition"),
        ({"tasks": []}, ValueError, "non-empty"),
        ({"tasks": ["piqa", "piqa"]}, ValueError, "distinct"),
        ({"limit": 0}, ValueError, "limit"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_arguments(tiny_llama, tiny_tokenizer, built_task_data, settings, error, message):
    with pytest.raises(error, match=message):
        evaluate_zero_shot(tiny_llama, tiny_tokenizer, data_dir=built_task_data, **settings)


def test_missing_task_data(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_zero_shot(tiny_llama, tiny_tokenizer, data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="piqa/valid.jsonl"):
        evaluate_zero_shot(tiny_llama, tiny_tokenizer, data_dir=tmp_path)
    monkeypatch.delenv("MULTIPRUNER_TASK_DATA", raising=False)
    with pytest.raises(ValueError, match="MULTIPRUNER_TASK_DATA"):
        evaluate_zero_shot(tiny_llama, tiny_tokenizer, offline=True)
