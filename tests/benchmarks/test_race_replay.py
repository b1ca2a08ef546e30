"""`benchmarks/race_replay.py` drives the library's own selection on logged losses: the exact rule replays the exact
search's choices and work; the fast rules do less, and a halving that drops the exact choice on its first sequence
makes the runner-up's choice, at its known cost."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from race_replay import RULES, replay  # noqa: E402

WEIGHTS = {"layer_weight": 10.0, "head_weight": 30.0, "num_layers": 4}
NUM_SEQUENCES = 4
# Calibration-loss increase over the base model, per sequence: the exact choice is worst of all on the first sequence
# (the halving's first round drops it) and best on the whole set; the runner-up is best on the first sequence.
EXACT_CHOICE = [0.3, 0.0, 0.0, 0.0]
RUNNER_UP = [0.1] * NUM_SEQUENCES
COST_PER_STEP = (sum(RUNNER_UP) - sum(EXACT_CHOICE)) / NUM_SEQUENCES


def logged_steps(num_steps=3):
    """A log as `record` writes it: per step, the base per-sequence objective and each candidate's, complete (the
    search scored every sequence) except a ruinous candidate stopped after one sequence. Step `s` plants the exact
    choice in `remove_mlp[s]` and the runner-up in `remove_attention[0]`; the others do mild, even damage."""
    steps = []
    for step in range(num_steps):
        base = [2.0 + 0.1 * step + 0.01 * s for s in range(NUM_SEQUENCES)]
        names = [f"{action}[{layer}]" for action in ("remove_attention", "remove_mlp") for layer in range(4)]
        damage = {name: [0.15 + 0.01 * k] * NUM_SEQUENCES for k, name in enumerate(names)}
        damage.update({f"remove_mlp[{step}]": EXACT_CHOICE, "remove_attention[0]": RUNNER_UP})
        candidates = {name: [b + d for b, d in zip(base, damage[name])] for name in names}
        candidates["remove_mlp[3]"] = [base[0] + 10.0]  # stopped early: cannot win
        steps.append({"base": base, "candidates": candidates})
    return steps


def test_exact_rule_replays_every_choice_and_fast_rules_work_less():
    steps = logged_steps()
    exact = replay(steps, RULES["exact"], WEIGHTS)
    assert exact["same_choice"] == 3 and exact["cost_of_other_choices"] == 0 and exact["plain_reference_ffe"] == 24
    for label in ("fast, no screen", "fast, no screen, tie z 1"):  # the tie rule starts on 2 sequences: too late
        fast = replay(steps, RULES[label], WEIGHTS)
        assert fast["same_choice"] == 0 and fast["ffe"] < exact["ffe"]
        assert fast["cost_of_other_choices"] == pytest.approx(3 * COST_PER_STEP)
    screened = replay(steps, RULES["fast, screen 0.25, tie z 1"], WEIGHTS)
    assert screened["ffe"] < replay(steps, RULES["fast, no screen, tie z 1"], WEIGHTS)["ffe"]
