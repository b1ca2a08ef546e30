"""Training text of a recovery run: several sources mixed by weight, prefix-stable (an extended run reads the shorter
run's text first), more than one pass only where allowed, and what each source gave recorded."""


import pytest
from testing_utils import make_text, write_jsonl

from optimum_multipruner.recovery.data import packed_training_text, source_schedule

SEQUENCE_LENGTH = 16


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    return write_jsonl(folder / "a.jsonl", make_text(200, seed=1)), write_jsonl(folder / "b.jsonl", ["zzz qqq xxx"] * 50)


def pack(tokenizer, sources, num_sequences, **kwargs):
    return packed_training_text(tokenizer, sources, num_sequences, SEQUENCE_LENGTH, seed=3, vocab_size=10**6, **kwargs)


def test_the_schedule_keeps_every_prefix_in_proportion():
    schedule = source_schedule([3.0, 1.0], 40)
    for end in range(1, 41):
        assert abs(schedule[:end].count(0) - 0.75 * end) <= 1
    assert source_schedule([3.0, 1.0], 12) == schedule[:12]  # a longer run starts with the shorter one's schedule
    assert source_schedule([1.0], 5) == [0] * 5


def test_sources_are_mixed_by_weight_and_an_extended_run_reads_the_shorter_runs_text_first(tokenizer, sources):
    short = pack(tokenizer, sources, 8, weights=[3, 1])
    longer = pack(tokenizer, sources, 20, weights=[3, 1])
    assert longer.input_ids[:8].equal(short.input_ids)
    b_token = tokenizer("zzz", add_special_tokens=False).input_ids[0]
    from_b = [bool((row == b_token).any()) for row in longer.input_ids]
    assert from_b == [index == 1 for index in source_schedule([3, 1], 20)]
    assert [usage.sequences for usage in longer.sources] == [15, 5]
    assert [usage.to_dict()["weight"] for usage in longer.sources] == [3, 1]


def test_one_source_in_a_list_reads_as_the_source_alone(tokenizer, sources):
    assert pack(tokenizer, [sources[0]], 6).input_ids.equal(pack(tokenizer, sources[0:1], 6).input_ids)
    usage = pack(tokenizer, [sources[0]], 6).sources[0]
    assert (usage.tokens, usage.unique_tokens, usage.epochs) == (6 * SEQUENCE_LENGTH, 6 * SEQUENCE_LENGTH, 1.0)


def test_a_budget_beyond_the_text_needs_more_passes_and_records_them(tokenizer, sources):
    one_pass = sum(len(tokenizer(row, add_special_tokens=False).input_ids) + 1 for row in ["zzz qqq xxx"] * 50)
    needed = one_pass // SEQUENCE_LENGTH + 3  # a little more than the whole of source b
    with pytest.raises(ValueError, match="max_epochs"):
        pack(tokenizer, [sources[1]], needed)
    data = pack(tokenizer, [sources[1]], needed, max_epochs=2)
    usage = data.sources[0]
    assert usage.unique_tokens == one_pass and usage.tokens == needed * SEQUENCE_LENGTH
    assert 1 < usage.epochs < 2
    with pytest.raises(ValueError, match="2 passes"):
        pack(tokenizer, [sources[1]], 2 * needed + 10, max_epochs=2)


def test_a_second_pass_reads_the_documents_in_another_order(tokenizer, sources):
    rows_tokens = sum(len(tokenizer(row, add_special_tokens=False).input_ids) + 1 for row in make_text(200, seed=1))
    sequences_per_pass = rows_tokens // SEQUENCE_LENGTH
    data = pack(tokenizer, [sources[0]], 2 * sequences_per_pass, max_epochs=2)
    tokens = data.input_ids.flatten()
    first, second = tokens[:rows_tokens], tokens[rows_tokens:]  # the whole text once, then most of it again
    assert len(second) > rows_tokens // 2
    assert set(second.tolist()) <= set(first.tolist())  # the same documents ...
    assert not first[: len(second)].equal(second)  # ... in another order
