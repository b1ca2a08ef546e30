"""Fast-mode rules replayed along the exact search's path: per step, which candidate each rule would choose and the
work it would do, free of the chaos of whole searches (a near tie taken the other way changes every later step).

`record` runs `fast_search_agreement.py` (its arguments follow) with the exact search's per-sequence losses logged:
one JSON line per step, the current model's per-sequence objective and every candidate's, as far as the exact
search scored it (early abandon stops a candidate once its partial total exceeds the best total).

    python benchmarks/race_replay.py record /root/runs/exact_tallies.jsonl -- --work-dir /root/runs/agreement_4608_whole \
        --rows 40 --threads 2 --modes exact

`replay` runs the library's own `CandidateSelector.select` (screen, halving, tie rule, early stopping) on the logged
losses instead of the model, step by step; every step starts from the exact search's model (the exact choice is
committed, whatever the rule chose). A candidate the exact search stopped early can not win: a rule that needs more of
its sequences drops it there. Reported per rule: the steps on which it makes the exact choice, the calibration-loss
cost of the others (mean NLL per sequence, about a relative perplexity increase), and its work in full-forward
equivalents (FFE) against the plain reference evaluation (one full forward per candidate).

    python benchmarks/race_replay.py replay /root/runs/exact_tallies.jsonl \
        --output benchmarks/results/race_replay_4608.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import fast_search_agreement  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

from optimum_multipruner import FastSearchConfig, MultiPruner, get_adapter  # noqa: E402
from optimum_multipruner.candidates import STAGE_ACTIONS, Candidate  # noqa: E402
from optimum_multipruner.configuration import calibration_set  # noqa: E402
from optimum_multipruner.scoring import (  # noqa: E402
    CandidateEvaluator,
    CandidateSelector,
    ModelEvaluator,
    SearchStats,
    Tally,
    rank_key,
)
from optimum_multipruner.utils import atomic_write_text  # noqa: E402

RULES = {  # label: the fast mode's settings (None: the exact search)
    "exact": None,
    "fast, no screen": FastSearchConfig(screen=None, tie_z=None),
    "fast, no screen, tie z 1": FastSearchConfig(screen=None, tie_z=1.0),
    **{f"fast, screen {screen}{f', tie z {z:g}' if z is not None else ''}"
       f"{f', keep {keep:g}' if keep != 0.5 else ''}{f', first {first}' if first != 1 else ''}":
       FastSearchConfig(first_sequences=first, keep=keep, screen=screen, tie_z=z)
       for screen in (0.15, 0.2, 0.25, 0.3, 0.4) for z in (None, 0.5, 1.0, 2.0) for keep in (0.5, 0.75, 1.0)
       for first in (1, 2) if keep != 1.0 or (z is None and first == 1)},  # keep 1: no halving, no ties to keep
}

STAGE_OF = {action: stage for stage, actions in STAGE_ACTIONS.items() for action in actions}


def record(log_path: str, agreement_args: list[str]) -> None:
    """Run `fast_search_agreement.py` with every scoring round of the search's evaluator logged to `log_path`."""

    class LoggedModelEvaluator(ModelEvaluator):
        def score_round(self, candidates, indices, trial, stop, keep, tallies, bar=None):
            totals = super().score_round(candidates, indices, trial, stop, keep, tallies, bar)
            line = {"base": self.base_objective.tolist(),
                    "candidates": {str(candidates[k]): tallies[k].objective[: tallies[k].done].tolist()
                                   for k in indices}}
            with open(log_path, "a") as log:
                log.write(json.dumps(line) + "\n")
            return totals

    class LoggingPruner(MultiPruner):
        evaluator_class = LoggedModelEvaluator

    fast_search_agreement.main(agreement_args, pruner_class=LoggingPruner)


class LoggedLosses(CandidateEvaluator):
    """An evaluator that scores candidates from the exact search's logged per-sequence losses of one step at a time
    ([`load`]) instead of running the model; totals are summed sequence by sequence (batch 1)."""

    def __init__(self, stats: SearchStats) -> None:
        super().__init__(stats.num_sequences, range(stats.num_sequences), stats)
        self.losses: dict[str, list[float]] = {}

    def load(self, step: dict) -> None:
        """The step's logged losses: every candidate's and the current model's."""
        self.losses = step["candidates"]
        self.base_objective = torch.tensor(step["base"], dtype=torch.float64)

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int, bound) -> bool:
        losses = self.losses[str(candidate)]
        while tally.done < stop:
            if tally.done == len(losses):
                return False  # the exact search stopped it here: it cannot win
            self.stats.layer_passes += self.stats.num_layers - candidate.layer
            self.stats.head_passes += 1
            tally.objective[tally.done] = losses[tally.done]
            tally.done += 1
            if bound is not None and tally.done < stop and rank_key(self.total(tally.objective), index) > bound:
                return False
        return True


def replay(steps: list[dict], fast_search: Optional[FastSearchConfig], weights: dict) -> dict:
    """Replay `steps` (log lines) with one rule (`RULES`); returns its agreement, cost and work."""
    selector, selector_set, same, cost, plain = None, None, 0, 0.0, 0
    stats = SearchStats(num_sequences=len(steps[0]["base"]), **weights)
    for step in steps:
        candidates = [Candidate.from_string(name) for name in step["candidates"]]
        full = {name: sum(losses) for name, losses in step["candidates"].items() if len(losses) == stats.num_sequences}
        exact = Candidate.from_string(min(full, key=full.get))
        if calibration_set(STAGE_OF[exact.action]) != selector_set:  # the search's selector of each calibration set
            selector = CandidateSelector(LoggedLosses(stats), fast_search, progress=False)
            selector_set = calibration_set(STAGE_OF[exact.action])
        selector.evaluator.load(step)
        chosen, _ = selector.select(candidates, lambda candidate: contextlib.nullcontext())
        same += chosen == exact
        cost += (full[str(chosen)] - full[str(exact)]) / stats.num_sequences
        plain += len(candidates)
        selector.follow(exact)  # the exact search's choice, whatever this rule chose
    return {"steps": len(steps), "same_choice": same, "cost_of_other_choices": cost,
            "ffe": stats.full_forward_equivalents, "plain_reference_ffe": plain,
            "fewer_than_plain": plain / stats.full_forward_equivalents}


def model_weights() -> dict:
    """Parameters of one dense decoder layer and of the lm_head of SmolLM2-135M, and its layer count (the FFE unit)."""
    model, _ = load_smollm2()
    layers = get_adapter(model).decoder_layers(model)
    return {"layer_weight": sum(p.numel() for p in layers[0].parameters()),
            "head_weight": model.get_output_embeddings().weight.numel(), "num_layers": len(layers)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("record", "replay"))
    parser.add_argument("log", help="the JSON-lines log of the exact search's losses")
    parser.add_argument("agreement_args", nargs="*", help="record: fast_search_agreement.py's arguments (after --)")
    parser.add_argument("--output", help="replay: write the report as JSON here")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.log, args.agreement_args)
        return
    steps = [json.loads(line) for line in open(args.log)]
    weights = model_weights()
    report = {"log": args.log, "steps": len(steps),
              "rules": {label: replay(steps, rule, weights) for label, rule in RULES.items()}}
    for label, result in report["rules"].items():
        print(f"{label:32s} same {result['same_choice']:3d}/{result['steps']}  cost {result['cost_of_other_choices']:.4f}"
              f"  FFE {result['ffe']:7.1f}  {result['fewer_than_plain']:5.1f}x fewer than plain")
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
