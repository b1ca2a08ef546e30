"""`evaluate_perplexity`: the value, the window bookkeeping, the per-data-set protocols and bad input."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from built_data import ptb_lines, wiki_rows, write_jsonl

from optimum_multipruner.evaluation import evaluate_perplexity


def num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text).input_ids)


def test_matches_hand_computation(tiny_llama, tiny_tokenizer, tmp_path):
    rows = wiki_rows(120)
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": row} for row in rows])
    result = evaluate_perplexity(
        tiny_llama, tiny_tokenizer, str(path), sequence_length=32, max_windows=5, batch_size=2, progress=False
    )

    # By hand: one tokenization of the blank-line join, first 5 windows of 32, exp(mean of per-window mean NLL).
    input_ids = torch.tensor(tiny_tokenizer("\n\n".join(rows)).input_ids)
    assert (input_ids != tiny_tokenizer.eos_token_id).all()  # so the EOS `ignore_index` drops nothing here
    window_nlls = []
    with torch.no_grad():
        for index in range(5):
            window = input_ids[index * 32 : (index + 1) * 32]
            log_probs = torch.log_softmax(tiny_llama(window[None], use_cache=False).logits[0].double(), dim=-1)
            token_log_probs = [log_probs[position, window[position + 1]].item() for position in range(31)]
            window_nlls.append(-sum(token_log_probs) / 31)
    assert result["perplexity"] == pytest.approx(math.exp(sum(window_nlls) / 5), rel=1e-5)
    assert result["num_windows"] == 5
    assert result["num_windows_available"] == input_ids.numel() // 32
    assert result["ignore_index"] == tiny_tokenizer.eos_token_id
    assert tiny_llama.config.use_cache and not tiny_llama.training  # evaluation left the model as it was


def test_window_count_and_cap(tiny_llama, tiny_tokenizer, tmp_path):
    rows = wiki_rows(200)
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": row} for row in rows])
    available = num_tokens(tiny_tokenizer, "\n\n".join(rows)) // 32
    assert available > 3

    capped = evaluate_perplexity(tiny_llama, tiny_tokenizer, str(path), 32, max_windows=3, progress=False)
    assert (capped["num_windows"], capped["num_windows_available"]) == (3, available)
    assert capped["protocol"] == "wikitext2"


def test_cap_above_available_uses_every_window(tiny_llama, tiny_tokenizer, tmp_path):
    rows = wiki_rows(40)
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": row} for row in rows])
    available = num_tokens(tiny_tokenizer, "\n\n".join(rows)) // 128
    assert available > 1
    result = evaluate_perplexity(tiny_llama, tiny_tokenizer, str(path), 128, max_windows=10_000, progress=False)
    assert result["num_windows"] == result["num_windows_available"] == available


def test_local_wikitext_jsonl_and_parquet_agree(tiny_llama, tiny_tokenizer, wikitext_jsonl, tmp_path):
    parquet = tmp_path / "test.parquet"
    datasets.Dataset.from_list([{"text": row} for row in wiki_rows(400)]).to_parquet(str(parquet))
    results = [
        evaluate_perplexity(tiny_llama, tiny_tokenizer, str(path), 256, max_windows=2, progress=False)
        for path in (wikitext_jsonl, parquet)
    ]
    assert results[0]["perplexity"] == results[1]["perplexity"]
    assert results[0]["num_windows_available"] == results[1]["num_windows_available"] > 2


def test_ptb_protocol_joins_stripped_sentences_with_spaces(tiny_llama, tiny_tokenizer, tmp_path):
    path = tmp_path / "ptb.test.txt"
    path.write_text("\n".join(ptb_lines(300)) + "\n", encoding="utf-8")
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    assert sentences != path.read_text(encoding="utf-8").splitlines()  # the lines have spaces to strip
    result = evaluate_perplexity(
        tiny_llama, tiny_tokenizer, str(path), 512, max_windows=1, progress=False, protocol="ptb"
    )
    assert result["protocol"] == "ptb"
    assert result["num_windows_available"] == num_tokens(tiny_tokenizer, " ".join(sentences)) // 512


def test_c4_protocol_keeps_first_1100_documents_and_256_windows(tiny_llama, tiny_tokenizer, tmp_path):
    documents = [f"Document {index} is short." for index in range(1200)]
    path = write_jsonl(tmp_path / "c4.jsonl", [{"text": document} for document in documents])
    few_long = evaluate_perplexity(
        tiny_llama, tiny_tokenizer, str(path), 256, max_windows=1, progress=False, protocol="c4"
    )
    assert few_long["num_windows_available"] == num_tokens(tiny_tokenizer, " ".join(documents[:1100])) // 256
    many_short = evaluate_perplexity(
        tiny_llama, tiny_tokenizer, str(path), 8, max_windows=2, progress=False, protocol="c4"
    )
    assert (many_short["num_windows"], many_short["num_windows_available"]) == (2, 256)


def test_openvino_model_matches_pytorch(tiny_llama, tiny_openvino_llama, tiny_tokenizer, wikitext_jsonl):
    path = str(wikitext_jsonl)
    settings = dict(sequence_length=64, max_windows=4, batch_size=2, progress=False)
    reference = evaluate_perplexity(tiny_llama, tiny_tokenizer, path, **settings)
    openvino = evaluate_perplexity(tiny_openvino_llama, tiny_tokenizer, path, **settings)
    assert openvino["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-4)


@pytest.mark.parametrize(
    ("dataset", "settings", "error", "message"),
    [
        ("wikitext3", {}, ValueError, "Unknown perplexity data set"),
        ("notes.csv", {}, ValueError, "Unknown perplexity data set"),
        ("wikitext2", {"protocol": "lambada"}, ValueError, "Unknown perplexity protocol"),
        ("wikitext2", {"sequence_length": 1}, ValueError, "sequence_length"),
        ("wikitext2", {"max_windows": 0}, ValueError, "max_windows"),
        ("wikitext2", {"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_arguments(tiny_llama, tiny_tokenizer, dataset, settings, error, message):
    with pytest.raises(error, match=message):
        evaluate_perplexity(tiny_llama, tiny_tokenizer, dataset, **settings)


def test_missing_file(tiny_llama, tiny_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_perplexity(tiny_llama, tiny_tokenizer, str(tmp_path / "missing.jsonl"))


def test_non_text_column(tiny_llama, tiny_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"text": "fine", "label": 1}, {"text": "too", "label": 2}])
    with pytest.raises(ValueError, match="must hold text"):
        evaluate_perplexity(tiny_llama, tiny_tokenizer, str(path), text_column="label")
    with pytest.raises(ValueError, match="no text column"):
        evaluate_perplexity(tiny_llama, tiny_tokenizer, str(path), text_column="body")


def test_text_shorter_than_one_window(tiny_llama, tiny_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "short.jsonl", [{"text": "a few words"}])
    with pytest.raises(ValueError, match="fewer than one sequence"):
        evaluate_perplexity(tiny_llama, tiny_tokenizer, str(path), sequence_length=512)
