"""`benchmarks/frontier.py`'s goals: the share of the PyTorch WikiText-2 gap recovery closes, and the recovered int4
IRs' perplexity and time per output token against dense int4, each met or not."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from frontier import goals, model_names  # noqa: E402


def row(model, weight_format, ppl, tpot=None):
    values = {"model": model, "format": weight_format, "wikitext2": ppl}
    if tpot is not None:
        values.update(tpot_s=tpot, ppl_vs_dense_int4=ppl / 30.0, tpot_vs_dense_int4=tpot / 0.010)
    return values


def test_goals_are_computed_from_the_rows():
    rows = [row("dense", "pytorch", 20.0), row("pruned10", "pytorch", 40.0), row("pruned10_recovered", "pytorch", 24.0),
            row("pruned20", "pytorch", 80.0), row("pruned20_recovered", "pytorch", 50.0),
            row("pruned10_recovered", "int4", 33.0, tpot=0.0086), row("pruned20_recovered", "int4", 40.0, tpot=0.0070)]
    result = goals(rows)
    assert result["gap_closed_10"]["value"] == pytest.approx(0.8) and result["gap_closed_10"]["met"]
    assert result["gap_closed_20"]["value"] == pytest.approx(0.5) and not result["gap_closed_20"]["met"]
    assert result["int4_10"]["met"]  # 1.10x the perplexity at 0.86x the time per token
    assert not result["int4_20"]["met"]  # 1.33x the perplexity: over 1.3 although 0.70x the time
    assert goals(rows[:2]) == {}  # nothing is claimed without its numbers


def test_the_measured_models_give_every_goal_and_each_pruned_model_its_recovered_one():
    names = model_names()
    rows = [row(name, "pytorch", 20.0 if name == "dense" else 30.0) for name in names]
    rows += [row(name, "int4", 30.0, tpot=0.01) for name in names if name.endswith("_recovered")]
    assert set(goals(rows)) == {"gap_closed_10", "gap_closed_20", "int4_10", "int4_20"}  # no goal lacks its model
    pruned = [name for name in names if name.startswith("pruned") and not name.endswith("_recovered")]
    assert pruned and all(f"{name}_recovered" in names for name in pruned)
