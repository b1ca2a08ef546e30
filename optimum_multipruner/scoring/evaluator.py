"""`CandidateEvaluator`: what a selection scores candidates with (a candidate on a prefix of the calibration
sequences, against a bound; the current model's objective; committing a choice)."""

from __future__ import annotations

import bisect
from contextlib import AbstractContextManager
from typing import Callable, Optional, Sequence

import torch

from ..candidates import Candidate
from .accounting import SearchStats
from .race import Tally, rank_key

TrialFactory = Callable[[Candidate], AbstractContextManager]


class CandidateEvaluator:
    """What a selection scores candidates with: each candidate's per-sequence calibration objective on the current
    model, on a prefix of the sequences, stopped early against a bound; and the current model's own objective.

    Subclasses implement [`score`] (and may share [`score_round`] out) and [`commit`]; see [`ModelEvaluator`] (the
    model itself) and `benchmarks/race_replay.py` (logged losses). Totals are summed per batch of sequences (starting
    at `batch_starts`), then over batches, as the plain evaluation sums them.
    """

    accelerated = True  # scores sequence by sequence: prefixes and early stopping (the plain evaluation does not)
    kl = False  # tallies hold a KL objective beside the NLL
    dtype: Optional[torch.dtype] = None  # of the model's weights, for the error of a non-finite step

    def __init__(self, num_sequences: int, batch_starts: Sequence[int], stats: SearchStats) -> None:
        self.num_sequences = num_sequences
        self.batch_starts = list(batch_starts)
        self.stats = stats
        self.base_objective = torch.zeros(num_sequences, dtype=torch.float64)  # the current model's, per sequence
        self.base_total = self.base_nll_total = 0.0

    def new_tally(self) -> Tally:
        return Tally(self.num_sequences, self.kl)

    def total(self, values: torch.Tensor) -> float:
        """Total of per-sequence values, summed as the plain evaluation sums them: per batch, then over batches."""
        ends = self.batch_starts[1:] + [self.num_sequences]
        return sum(values[start:end].sum().item() for start, end in zip(self.batch_starts, ends))

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int,
              bound: Optional[tuple[float, int]]) -> bool:
        """Extend `tally` (of `candidate`, the `index`-th of its step, applied now) to the first `stop` sequences;
        return False if stopped early because its partial total ranks after `bound` (see [`rank_key`])."""
        raise NotImplementedError

    def commit(self, candidate: Candidate, tally: Optional[Tally]) -> None:
        """`candidate` was applied for good; `tally` (its complete one, if known) is the current model's now."""
        if tally is not None:
            self.base_total, self.base_nll_total = self.total(tally.objective), self.total(tally.nll)
            self.base_objective = tally.objective

    def score_round(self, candidates: Sequence[Candidate], indices: Sequence[int], trial: TrialFactory, stop: int,
                    keep: Optional[int], tallies: dict[int, Tally], bar=None) -> dict[int, float]:
        """Score `candidates[k]` for each `k` of `indices`, in that order, on the first `stop` calibration sequences,
        continuing from its tally in `tallies` (made when missing), and return the totals of those that completed.

        A candidate stops after any sequence once it cannot be among the `keep` best of the round: its partial total
        (the sequences still to score counted as 0) ranks after the `keep`-th best completed total, ties to the
        earlier candidate. With `keep=None`, and in the plain scorer, every candidate is scored on all `stop` sequences.
        """
        totals: dict[int, float] = {}
        leaders: list[tuple[float, int]] = []  # rank keys of the best completed candidates, sorted, at most `keep`
        for k in indices:
            if k not in tallies:
                tallies[k] = self.new_tally()
                self.stats.candidates_started += 1
            bound = leaders[-1] if keep is not None and len(leaders) == keep else None
            with trial(candidates[k]):
                complete = self.score(candidates[k], k, tallies[k], stop, bound)
            if complete:
                totals[k] = self.total(tallies[k].objective)
                if keep is not None:
                    bisect.insort(leaders, rank_key(totals[k], k))
                    del leaders[keep:]
            else:
                self.stats.candidates_stopped_early += 1
            if bar is not None:
                bar.update()
        return totals
