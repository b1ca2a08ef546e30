"""Calibration text: local formats and the reference's row sampling, joining and chunking."""

import json
import random

import pytest

from optimum_multipruner.data import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    build_sequences,
    load_text_rows,
    sample_rows,
)


def test_txt_gives_one_row_per_line(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("first line\nsecond line\n\nfourth line\n")
    assert load_text_rows(str(path)) == ["first line", "second line", "", "fourth line"]


def test_json_jsonl_and_parquet(tmp_path):
    import datasets

    rows = [{"text": "alpha beta"}, {"text": "gamma delta"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("rows.jsonl", "rows.json", "rows.parquet"):
        assert load_text_rows(str(tmp_path / name)) == ["alpha beta", "gamma delta"]


def test_alpaca_records_without_text_get_the_alpaca_prompt(tmp_path):
    records = [
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"instruction": "Greet.", "input": "", "output": "Hello"},
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(records))
    rows = load_text_rows(str(tmp_path / "alpaca.json"))
    assert rows == [ALPACA_PROMPT.format(**records[0]), ALPACA_PROMPT_NO_INPUT.format(**records[1])]
    assert rows[0].endswith("### Input:\n1 and 2\n\n### Response:\n3")


@pytest.mark.parametrize(
    "name, content, error, message",
    [
        ("zero.txt", "", ValueError, "calibration file .* is empty"),
        ("empty.txt", "\n\n", ValueError, "holds no text"),
        ("other.jsonl", '{"body": "x"}\n', ValueError, "no text column"),
    ],
)
def test_bad_text_files(tmp_path, name, content, error, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(error, match=message):
        load_text_rows(str(tmp_path / name))


@pytest.mark.parametrize("name", ["numbers.jsonl", "numbers.json", "numbers.parquet"])
def test_number_valued_text_column_is_refused(tmp_path, name):
    import datasets

    rows = [{"text": 1}, {"text": 2}]
    path = tmp_path / name
    if name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) if name.endswith(".jsonl") else json.dumps(rows))
    with pytest.raises(ValueError, match=f"Column 'text' of .*{name} must hold text, but holds int values"):
        load_text_rows(str(path))


def test_missing_file_and_unsupported_format(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_text_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="not a supported text file"):
        load_text_rows(str(tmp_path / "data.csv"))


def test_rows_are_sampled_like_the_reference():
    rows = [f"row {i}" for i in range(100)]
    rng = random.Random(42)
    width, block = sample_rows(rows, 5, rng), sample_rows(rows, 7, rng)
    reference = random.Random(42)  # transformers.set_seed(42) seeds Python's random the same way
    assert width == [rows[i] for i in reference.sample(range(100), 5)]
    assert block == [rows[i] for i in reference.sample(range(100), 7)]
    with pytest.raises(ValueError, match="has only 100"):
        sample_rows(rows, 101, rng)


def test_sequences_join_with_blank_lines_tokenize_once_and_drop_the_remainder(tokenizer):
    rows = ["one two three", "four five", "six seven eight nine"]
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
    sequences = build_sequences(tokenizer, rows, 4)
    assert sequences.shape == (len(ids) // 4, 4)
    assert sequences.flatten().tolist() == ids[: sequences.numel()].tolist()
    assert (sequences == tokenizer.bos_token_id).sum() == 1  # one BOS, at the very start
    with pytest.raises(ValueError, match="fewer than one sequence"):
        build_sequences(tokenizer, rows, 1000)
