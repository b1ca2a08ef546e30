"""`benchmarks/race_replay.py` drives the library's own `CandidateScorer.select` on logged losses: the exact rule
replays the exact search's choices and work, the fast rules do less."""

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from race_replay import RULES, replay  # noqa: E402

WEIGHTS = {"layer_weight": 10.0, "head_weight": 30.0, "num_layers": 4}


def logged_steps(num_steps=3, num_sequences=4):
    """A log as `record` writes it: per step, the base per-sequence objective and each candidate's, complete (the
    search scored every sequence) except a ruinous candidate stopped after one sequence."""
    rng = random.Random(0)
    steps = []
    for step in range(num_steps):
        base = [2.0 + 0.1 * step + 0.01 * s for s in range(num_sequences)]
        candidates = {f"{action}[{layer}]": [b + rng.uniform(0.01, 0.2) for b in base]
                      for action in ("remove_attention", "remove_mlp") for layer in range(4)}
        candidates["remove_mlp[3]"] = [base[0] + 10.0]  # stopped early: cannot win
        steps.append({"base": base, "candidates": candidates})
    return steps


def test_exact_rule_replays_every_choice_and_fast_rules_work_less():
    steps = logged_steps()
    exact = replay(steps, RULES["exact"], WEIGHTS)
    assert exact["same_choice"] == 3 and exact["cost_of_other_choices"] == 0 and exact["plain_reference_ffe"] == 24
    for label in ("fast, no screen", "fast, screen 0.25", "fast, screen 0.25, tie z 1"):
        fast = replay(steps, RULES[label], WEIGHTS)
        assert fast["ffe"] < exact["ffe"] and fast["cost_of_other_choices"] >= 0
