"""Candidate scoring: per-sequence early stopping, the fast (racing) search, the KL objective, the chunked head and
non-finite losses."""

from contextlib import contextmanager

import pytest
import torch
from testing_utils import make_model, model_selector

from optimum_multipruner import FastSearchConfig, MultiPruner, MultiPrunerConfig, get_adapter
from optimum_multipruner.candidates import Candidate
from optimum_multipruner.data import build_sequences, load_text_rows
from optimum_multipruner.nll import head_chunk_bytes, head_losses, sequence_nll
from optimum_multipruner.record import PruningStep
from optimum_multipruner.scoring import (
    Tally,
    final_hidden_states,
    original_final_hidden_states,
    tied_with_leader,
)


@pytest.fixture(scope="module")
def sequences(tokenizer, calibration_file):
    return build_sequences(tokenizer, load_text_rows(calibration_file)[:16], 64)  # 8 sequences of 64 tokens


def scaled_head(model, scales):
    """A trial scaling the lm_head by `scales[candidate]` (1 = harmless, large = ruinous), restoring it afterwards."""
    head = model.get_output_embeddings()

    @contextmanager
    def trial(candidate):
        original = head.weight.detach().clone()
        with torch.no_grad():
            head.weight.mul_(scales[candidate])
        try:
            yield
        finally:
            with torch.no_grad():
                head.weight.copy_(original)

    return trial


def block_search(calibration_file, **overrides):
    values = dict(calibration_dataset=calibration_file, num_calibration_samples_block=160, sequence_length=64,
                  batch_size=4)
    return MultiPrunerConfig.blockpruner(0.05, **{**values, **overrides})


def planted_useless_attention(trained_model):
    model = trained_model("llama")
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
    return model


# --------------------------------------------------------------------------- exact search
def test_early_stop_fires_within_one_batch_and_totals_equal_the_plain_evaluation(trained_model, sequences):
    model = trained_model("llama")
    candidates = [Candidate("remove_mlp", 3), Candidate("remove_attention", 3), Candidate("remove_mlp", 2)]
    trial = scaled_head(model, dict(zip(candidates, (1.0, 1024.0, 512.0))))
    one_batch = len(sequences)
    fast = model_selector(model, get_adapter(model), sequences, one_batch)
    plain = model_selector(model, get_adapter(model), sequences, one_batch, accelerated=False)
    assert fast.base_total == plain.base_total  # bit for bit: same per-sequence values, summed in the same order
    best, total = fast.select(candidates, trial)
    plain_best, plain_total = plain.select(candidates, trial)
    assert best == plain_best == candidates[0] and total == plain_total
    assert fast.stats.candidates_stopped_early == 2 and plain.stats.candidates_stopped_early == 0
    # the ruinous candidates stopped after their first sequence: their layers and the head ran once, not 8 times
    assert fast.stats.full_forward_equivalents < 0.5 * plain.stats.full_forward_equivalents


def test_per_sequence_scoring_keeps_batched_totals_with_several_batches(trained_model, sequences):
    model = trained_model("llama")
    candidates = [Candidate("remove_attention", 0), Candidate("remove_mlp", 1)]
    trial = scaled_head(model, dict(zip(candidates, (2.0, 0.5))))
    totals = {}
    for accelerated in (False, True):
        selector = model_selector(model, get_adapter(model), sequences, 3, accelerated=accelerated)
        totals[accelerated] = (selector.base_total, selector.select(candidates, trial))
    assert totals[True] == totals[False]


# --------------------------------------------------------------------------- fast search
def test_fast_search_finds_the_planted_block_with_less_work(trained_model, tokenizer, calibration_file):
    records = {}
    for mode in ("exact", "fast"):
        pruner = MultiPruner(planted_useless_attention(trained_model), tokenizer)
        pruner.prune(block_search(calibration_file, search_mode=mode, max_steps=1), progress=False)
        records[mode] = pruner.record
    exact, fast = records["exact"], records["fast"]
    assert [(s.action, s.layer) for s in fast.steps] == [(s.action, s.layer) for s in exact.steps]
    assert (fast.steps[0].action, fast.steps[0].layer) == ("remove_attention", 2)
    assert [s.perplexity for s in fast.steps] == [s.perplexity for s in exact.steps]  # chosen on the full set
    fast_work, exact_work = (r.search_stats["block"]["full_forward_equivalents"] for r in (fast, exact))
    assert fast.search_stats["block"]["candidates_dropped"] > 0
    assert fast_work < 0.75 * exact_work


def test_fast_search_drops_candidates_and_chooses_by_the_full_set_total(trained_model, sequences):
    """Halving drops candidates round by round and returns the winner's total on all sequences; keeping every
    candidate is the exact search."""
    model = trained_model("llama")
    adapter = get_adapter(model)
    candidates = [Candidate("remove_mlp", layer) for layer in range(4)]
    trial = scaled_head(model, dict(zip(candidates, (16.0, 1.0, 64.0, 4.0))))  # sharper logits, higher NLL
    exact = model_selector(model, adapter, sequences, 4)
    best, total = exact.select(candidates, trial)
    for keep in (1.0, 0.5):
        fast = model_selector(model, adapter, sequences, 4,
                              fast_search=FastSearchConfig(keep=keep, screen=None, tie_z=None))
        assert fast.select(candidates, trial) == (best, total)
        assert fast.stats.candidates_dropped == (0 if keep == 1.0 else 3)  # 4 -> 2 -> 1 -> 1 candidates in 4 rounds
    assert best == candidates[1]
    with pytest.raises(ValueError, match="needs `accelerated_search=True`"):
        MultiPrunerConfig(search_mode="fast", accelerated_search=False)


def test_tie_rule_keeps_candidates_the_leader_is_not_clearly_ahead_of(trained_model, sequences):
    """`fast_search.tie_z`: a candidate the halving drops stays in the race while the mean of its per-sequence
    differences from the round leader's is at most z standard errors; a huge z races every candidate to the whole set,
    and the choice and its total are the exact search's either way."""
    model = trained_model("llama")
    adapter = get_adapter(model)
    candidates = [Candidate("remove_mlp", layer) for layer in range(4)]
    trial = scaled_head(model, dict(zip(candidates, (1.0, 1.05, 0.95, 1.1))))  # close calls
    best_and_total = model_selector(model, adapter, sequences, 4).select(candidates, trial)
    for tie_z, dropped in ((None, 3), (1e9, 0)):  # first round on 2 sequences: 4 -> 2 -> 1 by halving alone
        fast = model_selector(model, adapter, sequences, 4,
                              fast_search=FastSearchConfig(first_sequences=2, screen=None, tie_z=tie_z))
        assert fast.select(candidates, trial) == best_and_total
        assert fast.stats.candidates_dropped == dropped and fast.stats.candidates_stopped_early == 0

    tallies = {}
    for k, objective in enumerate(([2.0, 2.0, 2.0], [2.1, 1.95, 2.0], [2.1, 2.12, 2.0], [2.5, 2.6, 2.0])):
        tallies[k] = Tally(3, kl=False)
        tallies[k].objective[:] = torch.tensor(objective, dtype=torch.float64)
    # differences from the leader on 2 sequences: mean 0.025, standard error 0.075 (tied); 0.11, 0.01; 0.55, 0.05
    assert tied_with_leader(tallies, [0, 1, 2, 3], 1, 2, z=1.0) == [1]
    assert tied_with_leader(tallies, [0, 1, 2, 3], 2, 2, z=1.0) == []  # the second is kept by the halving
    assert tied_with_leader(tallies, [0, 1, 2, 3], 1, 2, z=20.0) == [1, 2, 3]


def test_screen_sits_out_candidates_far_behind_and_a_restored_scorer_screens_alike(trained_model, sequences):
    """Step 1 races every candidate; step 2 (a quarter of 4 candidates: 1 of those with a known damage races) screens
    out the ruinous candidate far from the removal, races the mild one, the ruinous one next to the removal (its damage
    forgotten, radius 1) and the one never scored; a selector restored from step 1's record screens the same way."""
    model = trained_model("llama")
    adapter = get_adapter(model)
    harmless, near, mild, ruinous, unseen = (Candidate("remove_attention", 0), Candidate("remove_mlp", 1),
                                             Candidate("remove_mlp", 2), Candidate("remove_mlp", 3),
                                             Candidate("remove_attention", 3))
    trial = scaled_head(model, {harmless: 1.0, near: 64.0, mild: 1.5, ruinous: 64.0, unseen: 64.0})

    def fast_selector(radius=1):
        return model_selector(model, adapter, sequences, 4,
                              fast_search=FastSearchConfig(screen=0.25, screen_radius=radius, tie_z=None))

    selector = fast_selector()
    assert selector.select([harmless, near, mild, ruinous], trial) == (harmless, selector.base_total)
    damage = selector.step_damage
    assert damage[str(harmless)] == 0 and 0 < damage[str(mild)] < min(damage[str(near)], damage[str(ruinous)])
    with pytest.raises(ValueError, match="the choice of the last `select`"):
        selector.committed(mild)
    selector.committed(harmless)  # the trial leaves the model as it was: the same base
    step = PruningStep(1, "block", harmless.action, harmless.layer, None, None, None, 0, damage)
    restored, radius_0 = fast_selector(), fast_selector(radius=0)
    for second in (selector, restored, radius_0):
        if second is not selector:
            second.restore_damage([step])
        started = second.stats.candidates_started
        assert second.select([near, mild, ruinous, unseen], trial)[0] == mild
        raced = {near, mild, unseen} if second is not radius_0 else {mild, unseen}  # radius 0: `near` sits out
        assert second.stats.candidates_screened == 4 - len(raced)
        assert second.stats.candidates_started - started == len(raced)
        assert set(second.step_damage) == {str(candidate) for candidate in raced}
    exact = model_selector(model, adapter, sequences, 4)  # the screen is the fast mode's only
    exact.select([harmless, mild, ruinous], trial)
    assert exact.step_damage is None and exact.stats.candidates_screened == 0


def test_candidates_read_back_from_their_names():
    assert Candidate.from_string(str(Candidate("shrink_mlp", 12))) == Candidate("shrink_mlp", 12)
    with pytest.raises(ValueError, match="Not a search candidate"):
        Candidate.from_string("shrink_mlp[x]")


# --------------------------------------------------------------------------- KL objective
def test_kl_of_the_unpruned_model_is_zero_and_its_perplexity_is_the_nll_one(trained_model, sequences):
    model = trained_model("llama")
    adapter = get_adapter(model)
    reference = original_final_hidden_states(model, adapter, sequences, 4)
    kl = model_selector(model, adapter, sequences, 4, importance_metric="kl", reference=reference)
    ppl = model_selector(model, adapter, sequences, 4)
    assert kl.base_total == 0.0
    assert kl.base_perplexity == ppl.base_perplexity
    assert kl.stats.full_forward_equivalents > ppl.stats.full_forward_equivalents  # the reference's forward counts


def test_kl_search_removes_the_planted_useless_block_first(trained_model, tokenizer, calibration_file):
    pruner = MultiPruner(planted_useless_attention(trained_model), tokenizer)
    pruner.prune(block_search(calibration_file, importance_metric="kl", max_steps=1), progress=False)
    first = pruner.record.steps[0]
    assert (first.action, first.layer) == ("remove_attention", 2)
    assert first.perplexity == pytest.approx(pruner.record.start_perplexity["block"], rel=1e-6)  # perplexity, not KL
    with pytest.raises(ValueError, match="importance_metric"):
        MultiPrunerConfig(importance_metric="accuracy")


# --------------------------------------------------------------------------- chunked head
@pytest.mark.parametrize("ignore_index", [None, 5])
def test_chunked_head_gives_the_unchunked_losses(trained_model, sequences, ignore_index):
    model = trained_model("llama")
    adapter = get_adapter(model)
    batch = sequences[:3]
    with torch.no_grad():
        hidden = final_hidden_states(model, adapter.decoder_layers(model), batch)
        reference = hidden * 1.1
        logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
        head = lambda h: adapter.head_logits(model, h)  # noqa: E731
        whole = head_losses(hidden, batch, head, ignore_index, chunk_size=64)
        whole_kl = head_losses(hidden, batch, head, ignore_index, reference, chunk_size=64)
        # Chunking changes only the order of float32 sums (and the BLAS blocking of the head's matmul), which differs
        # between CPUs: each per-position term is exact to a few ulp, so the NLL (a mean of terms ~log V) holds to
        # relative 1e-6 (~8 ulp) and the KL (a sum of differences of log-probabilities ~log V = 5.8, which cancel)
        # to absolute 1e-6 (eps * log V per position). Measured on an AMD EPYC: 2.4e-7 on the NLL, 7e-9 on the KL. A
        # chunk dropped or misaligned changes a loss by a whole position's share, orders of magnitude more.
        for chunk_size in (1, 7, 63):
            chunked = head_losses(hidden, batch, head, ignore_index, reference, chunk_size=chunk_size)
            torch.testing.assert_close(chunked.nll, whole.nll, rtol=1e-6, atol=0)
            torch.testing.assert_close(chunked.kl, whole_kl.kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.nll, sequence_nll(logits, batch, ignore_index), rtol=1e-6, atol=0)
    assert (whole_kl.kl > 0).all()
    assert head_chunk_bytes(1, 512, 128_256, torch.bfloat16) < 2**30  # 2048 tokens of a 128k vocabulary, 4 chunks
    assert head_chunk_bytes(1, 512, 128_256, torch.bfloat16, kl=True) < 2**31


# --------------------------------------------------------------------------- non-finite losses
def test_every_candidate_overflowing_in_float16_names_the_dtype(tokenizer, calibration_file):
    model = make_model("llama").half()
    with torch.no_grad():
        model.model.norm.weight.fill_(6e4)  # logits overflow float16 whatever the search removes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"float16.*bfloat16 or torch.float32"):
        MultiPruner(model, tokenizer).prune(block_search(calibration_file), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
