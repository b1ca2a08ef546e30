"""`benchmarks/frontier.py`'s goals: the share of the PyTorch WikiText-2 gap recovery closes, and the best int4 IR of
each recovered model against the best training-free dense int4 IR, each met or not; the Pareto front and the IR a user
would pick for a latency budget; the recovery curve's budgets and the trend that extrapolates it to a goal."""

import argparse
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from frontier import (  # noqa: E402
    Frontier,
    all_model_names,
    comma_list,
    curve_steps,
    goals,
    ir_names,
    model_names,
    pareto_front,
    picks,
    plot,
    plot_curves,
    recovery_trend,
    with_ratios,
)


def row(model, weight_format, ppl, tpot=None):
    values = {"model": model, "format": weight_format, "wikitext2": ppl}
    if tpot is not None:
        values.update(tpot_s=tpot, size_bytes=1e8)
    return values


def frontier_rows():
    return with_ratios([
        row("dense", "pytorch", 20.0), row("pruned10", "pytorch", 40.0), row("pruned10_recovered", "pytorch", 24.0),
        row("pruned20", "pytorch", 80.0), row("pruned20_recovered", "pytorch", 50.0),
        row("dense", "int4", 31.0, tpot=0.0100), row("dense", "int4_awq", 30.0, tpot=0.0101),
        row("dense_qat", "int4", 27.0, tpot=0.0100),
        row("pruned10_recovered", "int4", 36.0, tpot=0.0084), row("pruned10_qat", "int4", 32.7, tpot=0.0083),
        row("pruned20_recovered", "int4_awq", 40.0, tpot=0.0070),
    ])


def test_goals_compare_the_best_int4_of_a_recovered_model_with_the_best_training_free_dense_int4():
    rows = frontier_rows()
    result = goals(rows)
    assert result["gap_closed_10"]["value"] == pytest.approx(0.8) and result["gap_closed_10"]["met"]
    assert result["gap_closed_20"]["value"] == pytest.approx(0.5) and not result["gap_closed_20"]["met"]
    ten = result["int4_10"]
    assert ten["ir"] == "pruned10_qat int4" and ten["baseline"] == "dense int4_awq"  # the lower perplexity of each
    assert ten["ppl_ratio"] == pytest.approx(32.7 / 30.0) and ten["tpot_ratio"] == pytest.approx(0.0083 / 0.0101)
    assert ten["met"]  # 1.09x the perplexity at 0.82x the time per token
    assert ten["vs_dense_qat"]["ppl_ratio"] == pytest.approx(32.7 / 27.0)
    assert not result["int4_20"]["met"]  # 1.33x the perplexity: over 1.25 although 0.69x the time
    assert goals(rows[:2]) == {}  # nothing is claimed without its numbers


def test_the_measured_models_give_every_goal_and_each_pruned_model_its_recovered_one():
    names = model_names()
    rows = [row(name, "pytorch", 20.0 if name == "dense" else 30.0) for name in names]
    rows += [row(name, fmt, 30.0, tpot=0.01) for name, fmt in ir_names() if fmt.startswith("int4")]
    assert set(goals(with_ratios(rows))) == {"gap_closed_10", "gap_closed_20", "int4_10", "int4_20"}
    pruned = [name for name in names if name.startswith("pruned") and not name.endswith("_recovered")]
    assert pruned and all(f"{name}_recovered" in names for name in pruned)
    assert ("dense", "int4_awq") in ir_names() and ("dense_qat", "int4") in ir_names()  # the fair baselines


def test_the_pareto_front_and_the_pick_for_each_latency_budget(tmp_path):
    rows = frontier_rows()
    front = [f"{r['model']} {r['format']}" for r in pareto_front(rows)]
    assert front == ["pruned20_recovered int4_awq", "pruned10_qat int4", "dense_qat int4"]
    chosen = {share: f"{r['model']} {r['format']}" for share, r in picks(rows, 0.0101).items()}
    assert chosen == {0.75: "pruned20_recovered int4_awq", 0.85: "pruned10_qat int4", 1.0: "dense_qat int4"}
    plot(rows, str(tmp_path / "frontier.png"))
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_the_recovery_curve_is_measured_before_training_at_the_studys_budget_at_each_doubling_and_at_the_end():
    assert curve_steps(983_040, 512) == [0, 60, 120, 240, 480, 960, 1920]
    assert curve_steps(1_000_000, 1024) == [0, 30, 60, 120, 240, 480, 960, 977]
    assert curve_steps(20_000, 512) == [0, 40]  # a budget under the first point: before and after only


def test_the_trend_is_the_least_squares_line_in_log_tokens_and_gives_the_budget_of_the_goal(tmp_path):
    # dense 20, pruned 40: 40% of the gap closed at 30,720 tokens, then +5 points per doubling
    closed = {60: 0.40, 120: 0.45, 240: 0.50}
    curve = {"windows": 8, "tokens_per_step": 512, "dense": 20.0,
             "curve": {"0": 40.0, **{str(step): 40.0 - 20.0 * share for step, share in closed.items()}}}
    trend = recovery_trend(curve, goal=0.75)
    assert [point["tokens"] for point in trend["points"]] == [30_720, 61_440, 122_880]
    assert [point["gap_closed"] for point in trend["points"]] == pytest.approx([0.40, 0.45, 0.50])
    assert trend["fit"]["slope_per_doubling"] == pytest.approx(0.05)
    assert trend["tokens_for_goal"] == pytest.approx(30_720 * 2 ** 7)  # 7 more doublings of +5 points
    plot_curves({"pruned10": trend}, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 10_000

    flat = dict(curve, curve={"0": 40.0, "60": 30.0, "120": 30.0})
    assert recovery_trend(flat, 0.75)["tokens_for_goal"] is None  # a line that does not rise reaches no goal
    first = recovery_trend(dict(curve, curve={"0": 40.0, "60": 30.0}), 0.75)
    assert first["fit"] is None and math.isclose(first["points"][0]["gap_closed"], 0.5)  # one point: no line


def test_models_limits_the_stages_to_the_named_models_and_refuses_an_unknown_one(tmp_path):
    parser = argparse.ArgumentParser()
    models = comma_list(parser, "--models", "pruned10_recovered, pruned10_qat", all_model_names())
    frontier = Frontier(str(tmp_path), 983_040, 122_880, 8, 40, set(models))
    assert frontier.selected("pruned10_qat") and not frontier.selected("dense")
    assert all(Frontier(str(tmp_path), 983_040, 122_880, 8, 40).selected(name) for name in all_model_names())
    with pytest.raises(SystemExit):
        comma_list(parser, "--models", "pruned10,pruned30", all_model_names())
