"""The fast mode's frontier (`benchmarks/fast_search_frontier.py`) and the exact search seeded with another search's
first steps (`benchmarks/fast_search_agreement.py --exact-from`)."""

import os
import sys

import pytest
from transformers import LlamaConfig

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
from fast_search_agreement import structure_after  # noqa: E402
from fast_search_frontier import frontier_rows  # noqa: E402

from optimum_multipruner import PruningRecord, get_adapter  # noqa: E402

SMOLLM2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3)


@pytest.mark.parametrize("steps", [1, 10, 22, 40])
def test_structure_after_the_first_steps_of_a_record_is_what_the_search_kept(steps):
    """The committed 20% MultiPruner search (block, MLP and attention steps): the structure rebuilt from its steps is
    its recorded structure, and the first steps give the structure as it stood then."""
    record = PruningRecord.load(os.path.join(BENCHMARKS, "results", "smollm2", "multipruner_44_52_4_20"))
    structure = structure_after(record.steps[:steps], SMOLLM2, get_adapter("llama"))
    if steps == len(record.steps):
        assert structure == record.structure
    last = record.steps[steps - 1]
    kept = (structure.num_key_value_heads if "attention" in last.action else structure.intermediate_size)[last.layer]
    assert kept == last.kept
    assert sum(structure.intermediate_size) >= sum(record.structure.intermediate_size)


def report(fast_settings, fast_path, fast_ffe, fast_ppl, exact=None, agreement=None):
    settings = {"ratio": 0.2, "distribution": [44, 52, 4], "rows": 40, "sequence_length": 512,
                "mlp_group_size": 256, "fast_keep": 0.5, "fast_screen_radius": 1, **fast_settings}
    searches = {"fast": {"finished": True, "ffe": fast_ffe, "plain_reference_ffe": 1000, "path": fast_path,
                         "final_calibration_perplexity": fast_ppl[0],
                         "perplexity": {"first": fast_ppl[0], "held_out": fast_ppl[1]}}}
    if exact is not None:
        searches["exact"] = exact
    return {"settings": settings, "searches": searches, **({"agreement": agreement} if agreement else {})}


def test_the_frontier_compares_each_fast_search_with_the_exact_one():
    exact_path = ["remove_attention 5", "remove_mlp 6", "shrink_mlp 4", "shrink_mlp 4"]
    seeded_exact = {"finished": True, "seeded_steps": 2, "ffe": 50.0, "path": exact_path,
                    "perplexity": {"first": 10.0, "held_out": 20.0}}
    whole_exact = {"finished": True, "seeded_steps": 0, "ffe": 400.0, "perplexity": {"first": 10.0, "held_out": 20.0}}
    reports = [
        # an older report: its exact search whole (work known), no paths; its own comparison counts
        report({"fast_screen": None, "fast_tie_z": None}, None, 200.0, (9.8, 19.0), whole_exact,
               {"same_choice": 3, "steps_compared": 4}),
        # a newer one beside a seeded exact search: paths compared, work from the whole exact search
        report({"fast_screen": 0.3, "fast_tie_z": 0.5}, exact_path[:3] + ["shrink_mlp 7"], 80.0, (10.05, 20.1),
               seeded_exact),
    ]
    del reports[0]["searches"]["fast"]["path"]
    frontier = frontier_rows(reports)
    (name, search), = frontier.items()
    assert name == "MultiPruner 44:52:4 20%, 40 rows x 512"
    assert search["exact"]["ffe"] == 400.0  # not the seeded search's own 50
    unscreened, screened = search["fast"]  # in order of work saved
    assert unscreened["setting"] == "screen=None, tie_z=None" and unscreened["same_choice"] == 3
    assert unscreened["fewer_than_plain"] == pytest.approx(5.0) and unscreened["fewer_than_exact"] == pytest.approx(2.0)
    assert unscreened["goals_met"] == {"same_choice": False, "perplexity": True, "work": False}
    assert screened["setting"] == "screen=0.3, screen_radius=1, tie_z=0.5" and screened["same_choice"] == 3
    assert screened["calibration_excess"] == pytest.approx(0.005) and screened["held_out_excess"] == pytest.approx(0.005)
    assert screened["goals_met"] == {"same_choice": False, "perplexity": True, "work": True}
