"""Writing results as JSON and formatting them as a table."""

from __future__ import annotations

import json

import pytest

from optimum_multipruner.evaluation import format_results_table, write_results_json

PERPLEXITY_RESULT = {
    "kind": "perplexity",
    "dataset": "wikitext2",
    "protocol": "wikitext2",
    "perplexity": 29.1931,
    "sequence_length": 1024,
    "num_windows": 8,
    "num_windows_available": 297,
}
ZERO_SHOT_RESULT = {
    "kind": "zero_shot",
    "tasks": {
        "piqa": {"metric": "acc_norm", "value": 0.66, "num_items": 50, "num_items_available": 1838},
        "winogrande": {"metric": "acc", "value": 0.5, "num_items": 50, "num_items_available": 1267},
    },
    "mean": 0.58,
    "data": "local",
}


def test_table_rows():
    lines = format_results_table([PERPLEXITY_RESULT, ZERO_SHOT_RESULT]).splitlines()
    assert lines[0].split() == ["metric", "value", "evaluated", "on"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:3] == ["wikitext2", "perplexity", "29.1931"]
    assert "8/297 windows of 1024 tokens" in lines[2]
    assert lines[3].split() == ["piqa", "acc_norm", "0.6600", "50/1838", "items"]
    assert lines[4].split() == ["winogrande", "acc", "0.5000", "50/1267", "items"]
    assert lines[5].split()[:3] == ["zero-shot", "mean", "0.5800"]
    assert format_results_table(ZERO_SHOT_RESULT) == format_results_table([ZERO_SHOT_RESULT])


def test_table_rejects_other_dicts():
    with pytest.raises(ValueError, match="Not an evaluation result"):
        format_results_table({"perplexity": 3.0})


def test_json_round_trip(tmp_path):
    path = tmp_path / "new" / "folder" / "results.json"
    write_results_json({"perplexity": PERPLEXITY_RESULT, "zero_shot": ZERO_SHOT_RESULT}, path)
    assert json.loads(path.read_text()) == {"perplexity": PERPLEXITY_RESULT, "zero_shot": ZERO_SHOT_RESULT}
    assert [entry.name for entry in path.parent.iterdir()] == ["results.json"]  # no temporary file left behind
