"""`CandidateSelector`: the choice of each search step (the order of scoring, the rounds, the screen, the tie rule).

The exact search (default) makes exactly the plain search's choices. The fast search (a `FastSearchConfig`) races the
candidates over growing prefixes of the calibration sequences (successive halving): round 1 scores every candidate on
the first `first_sequences` sequences; each later round doubles the prefix (capped at all sequences) and scores only
the `ceil(keep * n)` candidates with the lowest totals on the previous round's prefix (ties to the earlier
candidate; `n` = candidates in that round); a candidate continues from the sequences it was already scored on, and
within a round stops as soon as it can no longer be among the candidates the round keeps. The round on all sequences
is the final one: its lowest total (exact early stopping, same tie rule) is the step's choice, so the choice is
always made on the whole calibration set, among the candidates still in the race. With `tie_z` (z), a
round also keeps every candidate that completed its prefix and that the round's leader is not clearly ahead of: the
mean of its per-sequence objective differences from the leader's is at most z standard errors (a paired test over the
prefix, from 2 sequences on). Halving a field of strong candidates cuts into the pack of near ties, whose order on a
few sequences is chance; the tie rule sends them on to more sequences. A round that keeps ties scores every candidate
on its whole prefix (no early stopping), so the ties it finds depend neither on the scoring order nor on the
number of processes.

With `screen` (a share s; off by default), a step first screens the candidates by what
earlier steps learnt about them: a candidate's damage is its mean objective increase per calibration sequence over the
model of the step that last scored it, on the prefix of the last round it was kept through in that step's race (its
first sequence if none): where early stopping left it does not count, so the damage does not depend on the order of
scoring nor on the number of processes. Of the n candidates of the step, the ceil(s * n) with the lowest last damage
race (ties to the earlier candidate), and so does every candidate with no damage known: never scored before (a
stage's first step), or of a layer within `screen_radius` (1) layers of a unit removed or shrunk since it
was last scored, since a removal changes its neighbours most (removing attention `i` can make removing MLP `i` or
`i - 1` much less harmful); the others sit the step out. Farther removals seldom make a unit much less harmful, and the
damage of the candidates that race is measured anew (it mostly grows as the model shrinks) while that of those
sitting out stays, so a candidate sitting out climbs back into the race as the others' damage grows past its own.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..candidates import Candidate
from ..configuration import FastSearchConfig
from .accounting import SearchStats
from .evaluator import CandidateEvaluator, TrialFactory
from .race import Tally, rank_key, tied_with_leader

if TYPE_CHECKING:
    from ..record import PruningStep


class CandidateSelector:
    """Chooses, step by step, the candidate whose removal gives the lowest calibration loss (NLL or KL total) on the
    current model, as `evaluator` scores them: every candidate on all sequences (exact: `fast_search=None`), or a race
    over growing prefixes behind a screen, with a tie rule (a `FastSearchConfig`; the plain evaluation always searches
    exactly). It keeps what a search learns from step to step: the order in which to score, and the damage each
    candidate did when last scored.
    """

    def __init__(self, evaluator: CandidateEvaluator, fast_search: Optional[FastSearchConfig] = None,
                 progress: bool = True) -> None:
        self.evaluator = evaluator
        self.progress = progress
        self.fast_search = fast_search if evaluator.accelerated else None
        self.screens = self.fast_search is not None and self.fast_search.screen is not None
        self._previous_ranks: dict[Candidate, tuple[int, float]] = {}  # (-sequences scored, total so far)
        self._damage: dict[Candidate, float] = {}  # damage when last scored (`_damage_of`), while still known
        self.step_damage: Optional[dict[str, float]] = None  # screening: the last step's damage of each scored candidate
        self._winner_tally: dict[Candidate, Tally] = {}  # the last step's choice, until `committed`
        self._stages_started = 0

    # ------------------------------------------------------------------ public API
    @property
    def stats(self) -> SearchStats:
        return self.evaluator.stats

    @property
    def num_sequences(self) -> int:
        return self.evaluator.num_sequences

    @property
    def base_total(self) -> float:
        """The current model's objective total."""
        return self.evaluator.base_total

    @property
    def base_perplexity(self) -> float:
        """Calibration perplexity of the model as it is now (before the next step), whatever the objective."""
        return self.to_perplexity(self.evaluator.base_nll_total)

    def to_perplexity(self, total: float) -> float:
        return math.exp(total / self.num_sequences)

    def start_stage(self, saved_stats: Optional[dict] = None) -> None:
        """Start counting a stage's work: anew, except for the first stage of this scorer (which counts the capture
        of the cache), on from `saved_stats` (`SearchStats.to_dict`) when a resumed stage did some already."""
        if self._stages_started:
            self.stats.reset_counters()
        self._stages_started += 1
        self.stats.continue_from(saved_stats)

    def step(self, candidates: Sequence[Candidate], trial: TrialFactory, apply: Callable[[Candidate], None],
             description: str = "candidates") -> tuple[Candidate, float]:
        """One greedy step: [`select`] the best candidate, `apply` it to the model for good, and take the model it
        gives as the current one ([`committed`]). Returns `(candidate, its objective total)`."""
        best, total = self.select(candidates, trial, description)
        apply(best)
        self.committed(best)
        return best, total

    @torch.no_grad()
    def select(self, candidates: Sequence[Candidate], trial: TrialFactory, description: str = "candidates"):
        """Return `(best candidate, its objective total)`: the lowest total on the whole calibration set, ties to the
        earliest candidate in `candidates`; among all candidates (exact) or those still in the race (fast)."""
        evaluator = self.evaluator
        start = time.perf_counter()
        screened = self._screened(candidates)
        self.stats.candidates_screened += len(screened)
        survivors = [k for k in range(len(candidates)) if k not in screened]
        if evaluator.accelerated:
            survivors.sort(key=lambda k: (self._previous_ranks.get(candidates[k], (0, math.inf)), k))
        stops = self._round_stops()
        kept = [len(survivors)]  # candidates of each round
        for _ in stops[1:]:
            kept.append(math.ceil(self.fast_search.keep * kept[-1]))
        tallies: dict[int, Tally] = {}
        completed: dict[int, int] = {}  # sequences every candidate was scored on, whatever the order and processes
        with tqdm(total=sum(kept), desc=description, disable=not self.progress, leave=False) as bar:
            for r, stop in enumerate(stops):
                completed.update((k, stops[r - 1] if r else 1) for k in survivors)  # the rounds it was kept through
                final = r + 1 == len(stops)
                keep = 1 if final else kept[r + 1]
                keeps_ties = not final and self.fast_search.tie_z is not None and stop >= 2
                # such a round scores every candidate on its whole prefix, so the ties it keeps depend neither on the
                # scoring order nor on the processes
                totals = evaluator.score_round(candidates, survivors, trial, stop, None if keeps_ties else keep,
                                               tallies, bar)
                ranked = sorted(totals, key=lambda k: rank_key(totals[k], k))
                survivors = ranked[:keep]
                if keeps_ties:
                    tied = tied_with_leader(tallies, ranked, keep, stop, self.fast_search.tie_z)
                    survivors += tied
                    bar.total += len(tied)
                if not final:
                    self.stats.candidates_dropped += max(len(ranked) - len(survivors), 0)
        for k, tally in tallies.items():
            self._previous_ranks[candidates[k]] = (-tally.done, evaluator.total(tally.objective))
        if self.screens:
            damage = {candidates[k]: self._damage_of(tallies[k], n) for k, n in completed.items()}
            self._damage.update(damage)
            self.step_damage = {str(candidate): value for candidate, value in damage.items()}
        best = survivors[0]
        total = totals[best]
        if not math.isfinite(total):
            raise FloatingPointError(
                f"Every candidate of this step scored a non-finite calibration loss (NaN or inf): the model overflows "
                f"in {evaluator.dtype}. Search in torch.bfloat16 or torch.float32 (load the model with `torch_dtype=` "
                "one of them; CLI: --dtype bfloat16 or --dtype float32)."
            )
        self._winner_tally = {candidates[best]: tallies[best]}
        self.stats.seconds += time.perf_counter() - start
        return candidates[best], total

    def committed(self, candidate: Candidate) -> None:
        """Tell the selector `candidate`, the choice of the last `select`, was applied for good: its losses become the
        current model's (see `CandidateEvaluator.commit`)."""
        if candidate not in self._winner_tally:
            raise ValueError(f"`committed` takes the choice of the last `select`, got {candidate}.")
        self._forget(candidate)
        self.evaluator.commit(candidate, self._winner_tally.pop(candidate))

    def follow(self, candidate: Candidate) -> None:
        """Take `candidate` as applied for good whatever `select` chose: a replay along another search's path, whose
        evaluator knows the next model's losses by itself (it commits with no tally)."""
        self._forget(candidate)
        self._winner_tally = {}
        self.evaluator.commit(candidate, None)

    def restore_damage(self, steps: Sequence["PruningStep"]) -> None:
        """Take up the screening state of a search that made `steps` (`PruningStep`s, in order) on this scorer's
        calibration set: each step's `candidate_damage`, then the damage near its own candidate forgotten (as `select`
        and `committed` leave it), so a resumed search screens as the uninterrupted one did."""
        for step in steps:
            damage = step.candidate_damage or {}
            self._damage.update((Candidate.from_string(text), value) for text, value in damage.items())
            self._forget_damage_near(Candidate(step.action, step.layer))

    # ------------------------------------------------------------------ screening (fast mode)
    def _forget(self, changed: Candidate) -> None:
        """What a unit applied for good makes stale: its own rank, and the damage near it."""
        self._previous_ranks.pop(changed, None)
        self._forget_damage_near(changed)

    def _screened(self, candidates: Sequence[Candidate]) -> set[int]:
        """Indices of the candidates that sit this step out: those scored before whose last damage is not among the
        `ceil(fast_search.screen * len(candidates))` lowest (ties to the earlier candidate; NaN ranks last)."""
        if not self.screens:
            return set()
        known = sorted(rank_key(self._damage[c], k) for k, c in enumerate(candidates) if c in self._damage)
        return {k for _, k in known[math.ceil(self.fast_search.screen * len(candidates)):]}

    def _forget_damage_near(self, changed: Candidate) -> None:
        """Forget the damage of the candidates within `fast_search.screen_radius` layers of `changed` (its own
        included: gone, or another group of a shrunk layer), so they race at the next step."""
        if not self.screens:
            return
        radius = self.fast_search.screen_radius
        for candidate in [c for c in self._damage if abs(c.layer - changed.layer) <= radius]:
            del self._damage[candidate]

    def _damage_of(self, tally: Tally, sequences: int) -> float:
        """A candidate's damage: its mean objective increase per sequence over the current model, on the first
        `sequences` calibration sequences."""
        return (tally.objective[:sequences] - self.evaluator.base_objective[:sequences]).mean().item()

    def _round_stops(self) -> list[int]:
        """Sequences each round scores up to: all of them (exact), or doubling from the first round's (fast)."""
        if self.fast_search is None:
            return [self.num_sequences]
        stops, stop = [], self.fast_search.first_sequences
        while stop < self.num_sequences:
            stops.append(stop)
            stop *= 2
        return stops + [self.num_sequences]
