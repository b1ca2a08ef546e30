"""Scoring search candidates by a calibration loss, plainly or accelerated, exactly or fast.

The objective (`importance_metric`) is the sum over calibration sequences of each sequence's mean next-token NLL
(`"ppl"`, the reference's: the lowest sum is the lowest perplexity) or mean KL divergence from the original unpruned
model's next-token distribution (`"kl"`; the original's hidden states entering the final norm are cached once per
calibration set, its log-probabilities recomputed chunk by chunk through the final norm and `lm_head`).

The plain scorer runs the whole model for every candidate, as the reference code does. The accelerated one
(1) caches the hidden states entering every decoder layer of the current model, so a candidate that changes layer
`i` only recomputes layers `i..L-1` and the head, one calibration sequence at a time; (2) stops a candidate, after any
sequence, as soon as its partial total exceeds the best complete total (exact: every per-sequence term is
non-negative, and totals are summed per batch of `batch_size` sequences, then over batches, as the plain evaluation
sums them); (3) tries the candidates that got furthest and scored best in the previous step first, so the bound
tightens early. Ties go to the candidate that comes first in the reference order, as the reference's strict `<` does.

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

Under torch.distributed (`torchrun`, `accelerate launch`) every round is shared out between the processes, each
holding the whole model and cache (see `distributed.py`); each stops its candidates early against its own bound,
then every process receives every tally, so all make the choices one process makes, in both modes.

Two jobs, two classes: a [`CandidateSelector`] decides (the order of scoring, the rounds, the screen, the tie rule,
the choice), a [`CandidateEvaluator`] scores (a candidate on a prefix of the sequences, against a bound; the current
model's objective; committing a choice). [`ModelEvaluator`] scores on the model (the cache, the plain and
accelerated paths, the sharing of rounds between processes); [`CandidateScorer`] is the selector over it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .architectures import ArchitectureAdapter
from .candidates import Candidate
from .configuration import FastSearchConfig
from .devices import DeviceLike, as_device, decoder_layer_devices, execution_device, move_to_device
from .nll import DEFAULT_HEAD_CHUNK_SIZE, SequenceLosses, head_losses

if TYPE_CHECKING:
    from .record import PruningStep


@dataclass
class SearchStats:
    """Work done by a scorer, in units of one full forward pass over the calibration set."""

    candidates_started: int = 0
    candidates_stopped_early: int = 0  # stopped by the bound: could no longer win (or stay in the race)
    candidates_dropped: int = 0  # fast mode: scored on a round's prefix, then left out of the next round
    candidates_screened: int = 0  # fast mode: sat a step out, screened by the damage they showed at an earlier step
    layer_passes: int = 0  # decoder-layer forward passes over one calibration sequence
    head_passes: int = 0  # final norm + lm_head + loss over one sequence (KL: each model's logits count once)
    seconds: float = 0.0
    layer_weight: float = 1.0  # parameters of one dense decoder layer
    head_weight: float = 1.0  # parameters of the lm_head
    num_layers: int = 1
    num_sequences: int = 1
    processes: int = 1  # processes of a distributed search whose work the counters sum
    busiest_process_work: float = 0.0  # distributed: full-forward equivalents of the process that worked most

    @property
    def full_forward_equivalents(self) -> float:
        """Passes weighted by the parameters they run, divided by one forward of the whole calibration set."""
        work = self.layer_passes * self.layer_weight + self.head_passes * self.head_weight
        return work / ((self.num_layers * self.layer_weight + self.head_weight) * self.num_sequences)

    COUNTERS = ("candidates_started", "candidates_stopped_early", "candidates_dropped", "candidates_screened",
                "layer_passes", "head_passes")

    def reset_counters(self) -> None:
        """Start counting anew (a new stage on the same calibration set)."""
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.seconds = 0.0

    def to_dict(self) -> dict:
        return {
            "candidates_started": self.candidates_started,
            "candidates_stopped_early": self.candidates_stopped_early,
            "candidates_dropped": self.candidates_dropped,
            "candidates_screened": self.candidates_screened,
            "layer_passes": self.layer_passes,
            "head_passes": self.head_passes,
            "full_forward_equivalents": round(self.full_forward_equivalents, 3),
            "seconds": round(self.seconds, 3),
            **({"processes": self.processes,
                "busiest_process_full_forward_equivalents": round(self.busiest_process_work, 3)}
               if self.processes > 1 else {}),
        }

    def continue_from(self, saved: Optional[dict]) -> None:
        """Count on from `saved` (`to_dict` of a stage's statistics, summed over the processes): the work a resumed
        stage did up to its last saved step. Under torch.distributed only rank 0 adds it, so the sum counts it once."""
        if not saved or distributed.rank() != 0:
            return
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + saved.get(name, 0))
        self.seconds += saved.get("seconds", 0.0)

    def summed_over_ranks(self, device: torch.device) -> "SearchStats":
        """A copy whose work counters are summed over the processes of a distributed search (a collective: every
        rank calls it), with the work of the busiest process, which bounds the speed-up. `candidates_dropped` and
        `candidates_screened` are the same on every rank; `seconds` stays this process's wall time."""
        work = ("candidates_started", "candidates_stopped_early", "layer_passes", "head_passes")
        mine = torch.tensor([[*(getattr(self, name) for name in work), self.full_forward_equivalents]],
                            dtype=torch.float64)
        processes = distributed.world_size()
        rows = distributed.all_gather_rows(mine, [1] * processes, device)  # [processes, counters + 1]
        sums = rows[:, :-1].sum(0).tolist()
        return dataclasses.replace(self, **{name: int(value) for name, value in zip(work, sums)},
                                   processes=processes, busiest_process_work=rows[:, -1].max().item())


class Tally:
    """One candidate's per-sequence losses in a step, `[num_sequences]` float64, scored in sequence order: the first
    `done` entries are known, the others 0 (so the total is a lower bound until all are known)."""

    def __init__(self, num_sequences: int, kl: bool) -> None:
        self.objective = torch.zeros(num_sequences, dtype=torch.float64)
        self.nll = torch.zeros(num_sequences, dtype=torch.float64) if kl else self.objective
        self.done = 0

    def fill(self, start: int, losses: SequenceLosses) -> None:
        """Store the losses of sequences `start, start + 1, ...` (the next ones to be known)."""
        stop = start + len(losses.nll)
        self.nll[start:stop] = losses.nll.cpu()
        if losses.kl is not None:
            self.objective[start:stop] = losses.kl.cpu()
        self.done = stop

    def to_row(self) -> torch.Tensor:
        """`[done, objective..., nll... (KL only)]`, float64: the tally as one row, to send to the other ranks."""
        parts = [torch.tensor([self.done], dtype=torch.float64), self.objective]
        return torch.cat(parts + ([self.nll] if self.nll is not self.objective else []))

    @classmethod
    def from_row(cls, row: torch.Tensor, num_sequences: int, kl: bool) -> "Tally":
        tally = cls(num_sequences, kl)
        tally.done = int(row[0])
        tally.objective.copy_(row[1 : 1 + num_sequences])
        if kl:
            tally.nll.copy_(row[1 + num_sequences :])
        return tally


def rank_key(total: float, index: int) -> tuple[float, int]:
    """Lower is better; ties to the earlier candidate; NaN ranks with +inf."""
    return (math.inf if math.isnan(total) else total, index)


def tied_with_leader(tallies: dict[int, Tally], ranked: Sequence[int], keep: int, stop: int, z: float) -> list[int]:
    """Of the candidates `ranked` after the `keep` best of a round on the first `stop` (>= 2) sequences, those the
    round's leader `ranked[0]` is not clearly ahead of: the mean of their per-sequence objective differences from the
    leader's is at most `z` standard errors (paired, over the `stop` sequences)."""
    if not ranked:
        return []
    leader = tallies[ranked[0]].objective[:stop]  # [stop]
    tied = []
    for k in ranked[keep:]:
        difference = tallies[k].objective[:stop] - leader  # [stop]
        if difference.mean().item() <= z * difference.std().item() / math.sqrt(stop):
            tied.append(k)
    return tied


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


class ModelEvaluator(CandidateEvaluator):
    """Scores candidates on the model itself: plainly (a whole forward per batch, as the reference) or accelerated
    (cached layer inputs, sequence by sequence, early stopping); a round is shared out between the processes of a
    distributed search.

    `reference`: for `importance_metric="kl"`, the original model's hidden states entering the final norm,
    `[num_sequences, seq_len, hidden]` (see [`final_hidden_states`]). `head_chunk_size`: positions per chunk of the
    final norm + `lm_head` + loss (see `nll.head_losses`).
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchitectureAdapter,
        sequences: torch.Tensor,
        batch_size: int,
        ignore_index: Optional[int] = None,
        accelerated: bool = True,
        cache_device: Optional[DeviceLike] = None,
        importance_metric: str = "ppl",
        reference: Optional[torch.Tensor] = None,
        head_chunk_size: int = DEFAULT_HEAD_CHUNK_SIZE,
    ) -> None:
        if (importance_metric == "kl") != (reference is not None):
            raise ValueError("The KL objective needs the original model's final hidden states (`reference`), and only it.")
        self.model = model
        self.adapter = adapter
        self.layers = adapter.decoder_layers(model)
        self.ignore_index = ignore_index
        self.accelerated = accelerated
        self.kl = reference is not None
        self.dtype = next(model.parameters()).dtype
        self.reference = reference
        self.head_chunk_size = head_chunk_size
        device = execution_device(model.get_input_embeddings())
        self.batches = [batch.to(device) for batch in sequences.split(batch_size)]  # each [batch, seq_len]
        self.layer_devices = decoder_layer_devices(model, self.layers)  # accelerate's execution devices if dispatched
        self.cache_device = None if cache_device is None else as_device(cache_device)
        self._batch_size = batch_size
        stats = SearchStats(
            layer_weight=sum(p.numel() for p in self.layers[0].parameters()),
            head_weight=model.get_output_embeddings().weight.numel(),
            num_layers=len(self.layers),
            num_sequences=len(sequences),
        )
        super().__init__(len(sequences), [b * batch_size for b in range(len(self.batches))], stats)
        if reference is not None:  # its capture was one whole forward of the original model
            self.stats.layer_passes += len(self.layers) * self.num_sequences
            self.stats.head_passes += self.num_sequences
        self._layer_inputs: list[list[torch.Tensor]] = []  # [layer][batch] -> [batch, seq_len, hidden], on its cache device
        self._layer_kwargs: list[list[dict]] = []  # [layer][batch] -> keyword arguments of the layer call, on its device
        start = time.perf_counter()
        with torch.no_grad():  # the plain evaluation too: no autograd graph
            base = self._capture() if accelerated else self._full_tally()
        self.base_total, self.base_nll_total = self.total(base.objective), self.total(base.nll)
        self.base_objective = base.objective  # [num_sequences]: the current model's per-sequence objective
        self.stats.seconds += time.perf_counter() - start

    def score_round(self, candidates: Sequence[Candidate], indices: Sequence[int], trial: TrialFactory, stop: int,
                    keep: Optional[int], tallies: dict[int, Tally], bar=None) -> dict[int, float]:
        """[`CandidateEvaluator.score_round`] spread over the processes of a distributed search (just the round with
        one process).

        The candidates are shared out, balanced by the work each has left (the layers it recomputes and the head,
        times the sequences it has still to score); each rank scores its share with its own bound; then every rank
        receives every tally, so all ranks hold the same totals and ordering hints. A candidate one rank stopped
        early ranks after `keep` complete candidates of that rank, so it cannot be among the `keep` best of all:
        the round keeps exactly the candidates one process keeps.
        """
        num_ranks = distributed.world_size()
        if num_ranks == 1:
            return super().score_round(candidates, indices, trial, stop, keep, tallies, bar)
        costs = [self._work_left(candidates[k], tallies.get(k), stop) for k in indices]
        shares = distributed.share_out(costs, num_ranks)
        mine = [indices[p] for p in shares[distributed.rank()]]
        super().score_round(candidates, mine, trial, stop, keep, tallies, bar)
        rows = torch.zeros(len(mine), 2 + self.num_sequences * (2 if self.kl else 1), dtype=torch.float64)
        for row, k in zip(rows, mine):  # [candidate index, done, objective..., nll...]
            row[0], row[1:] = k, tallies[k].to_row()
        for row in distributed.all_gather_rows(rows, [len(share) for share in shares], self.batches[0].device):
            tallies[int(row[0])] = Tally.from_row(row[1:], self.num_sequences, self.kl)
        if bar is not None:
            bar.update(len(indices) - len(mine))
        return {k: self.total(tallies[k].objective) for k in indices if tallies[k].done >= stop}

    def _work_left(self, candidate: Candidate, tally: Optional[Tally], stop: int) -> float:
        """Parameters a candidate still runs in a round: the layers it recomputes and the head, per sequence left."""
        layers = len(self.layers) - candidate.layer if self.accelerated else len(self.layers)
        sequences = stop - (tally.done if tally is not None else 0)
        return (layers * self.stats.layer_weight + self.stats.head_weight) * sequences

    @torch.no_grad()
    def commit(self, candidate: Candidate, tally: Optional[Tally]) -> None:
        """Its losses become the current model's; refresh cached layer inputs after its layer."""
        start = time.perf_counter()
        super().commit(candidate, tally)
        if self.accelerated:
            first = candidate.layer
            for b in range(len(self.batches)):
                hidden = self._layer_inputs[first][b]
                for i in range(first, len(self.layers) - 1):
                    hidden = self._run_layer(i, b, hidden)
                    self._layer_inputs[i + 1][b] = hidden.to(self._cache_device(i + 1))
        self.stats.seconds += time.perf_counter() - start

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int,
              bound: Optional[tuple[float, int]]) -> bool:
        """One sequence at a time from the cached inputs of the candidate's layer (the plain evaluation: a whole
        forward of every batch, never stopped)."""
        if not self.accelerated:
            self._full_tally(tally)
            return True
        while tally.done < stop:
            b, row = divmod(tally.done, self._batch_size)
            hidden = self._layer_inputs[candidate.layer][b][row : row + 1]  # [1, seq_len, hidden]
            for i in range(candidate.layer, len(self.layers)):
                hidden = self._run_layer(i, b, hidden, row)
            tally.fill(tally.done, self._head_losses(hidden, b, row))
            if bound is not None and tally.done < stop and rank_key(self.total(tally.objective), index) > bound:
                return False
        return True

    def _run_layer(self, i: int, b: int, hidden: torch.Tensor, row: Optional[int] = None) -> torch.Tensor:
        """Layer `i` on batch `b`'s hidden states, or on its sequence `row` alone."""
        self.stats.layer_passes += len(hidden)
        kwargs = self._layer_kwargs[i][b]
        if row is not None:
            kwargs = _select_row(kwargs, row, len(self.batches[b]))
        return self.layers[i](hidden.to(self.layer_devices[i]), **kwargs)

    def _cache_device(self, i: int) -> torch.device:
        """Where layer `i`'s cached inputs live: `cache_device` if given, else the device the layer runs on."""
        return self.layer_devices[i] if self.cache_device is None else self.cache_device

    def _head_losses(self, hidden: torch.Tensor, b: int, row: Optional[int] = None) -> SequenceLosses:
        """Final norm, lm_head and per-sequence losses of batch `b` (or its sequence `row`), from the last layer's
        output `hidden`; the KL objective also runs the original model's cached final hidden states through the head."""
        rows = slice(None) if row is None else slice(row, row + 1)
        input_ids = self.batches[b][rows]
        reference = None
        if self.reference is not None:
            start = self.batch_starts[b]
            reference = self.reference[start : start + len(self.batches[b])][rows]
        self.stats.head_passes += len(input_ids) * (1 if reference is None else 2)
        return head_losses(hidden, input_ids, lambda h: self.adapter.head_logits(self.model, h), self.ignore_index,
                           reference, self.head_chunk_size)

    def _full_tally(self, tally: Optional[Tally] = None) -> Tally:
        """Reference evaluation: a whole-model forward per batch, filling `tally` (a new one if not given)."""
        tally = self.new_tally() if tally is None else tally
        for b in range(len(self.batches)):
            tally.fill(self.batch_starts[b], self._batch_losses(b))
        return tally

    def _batch_losses(self, b: int) -> SequenceLosses:
        batch = self.batches[b]
        hidden = final_hidden_states(self.model, self.layers, batch)
        self.stats.layer_passes += len(self.layers) * len(batch)
        return self._head_losses(hidden, b)

    def _capture(self) -> Tally:
        """One decoder forward per batch that records every layer's input (on its cache device) and call arguments
        (on the layer's device, copied once per device), then the head on the last layer's output."""
        num_batches = len(self.batches)
        self._layer_inputs = [[None] * num_batches for _ in self.layers]
        self._layer_kwargs = [[None] * num_batches for _ in self.layers]
        current = {"batch": 0, "moved": {}}

        def recorder(i: int):
            def hook(module, args, kwargs):
                b = current["batch"]
                hidden = args[0] if args else kwargs["hidden_states"]
                self._layer_inputs[i][b] = hidden.to(self._cache_device(i))
                arguments = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                self._layer_kwargs[i][b] = move_to_device(arguments, self.layer_devices[i], current["moved"])

            return hook

        handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        tally = self.new_tally()
        try:
            for b in range(num_batches):
                current.update(batch=b, moved={})
                tally.fill(self.batch_starts[b], self._batch_losses(b))
        finally:
            for handle in handles:
                handle.remove()
        return tally


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


class CandidateScorer(CandidateSelector):
    """A [`CandidateSelector`] scoring on the model itself: `CandidateScorer(model, adapter, sequences, batch_size,
    ...)` takes the arguments of [`ModelEvaluator`], and the selector's `fast_search` and `progress` by name."""

    def __init__(self, *args, fast_search: Optional[FastSearchConfig] = None, progress: bool = True,
                 **kwargs) -> None:
        super().__init__(ModelEvaluator(*args, **kwargs), fast_search, progress)


def final_hidden_states(model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states entering the final norm, `[batch, seq_len, hidden]`: one decoder forward, no `lm_head`."""
    outputs = []
    handle = layers[-1].register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        model.get_decoder()(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    finally:
        handle.remove()
    return outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]


@torch.no_grad()
def original_final_hidden_states(model: nn.Module, adapter: ArchitectureAdapter, sequences: torch.Tensor,
                                 batch_size: int, device: Optional[DeviceLike] = None) -> torch.Tensor:
    """The KL objective's reference: the (unpruned) model's hidden states entering the final norm for `sequences`,
    `[num_sequences, seq_len, hidden]`, on `device` (default: where the last layer computes). Take it before any step."""
    layers = adapter.decoder_layers(model)
    start = execution_device(model.get_input_embeddings())
    device = execution_device(layers[-1], default=start) if device is None else as_device(device)
    return torch.cat([final_hidden_states(model, layers, batch.to(start)).to(device)
                      for batch in sequences.split(batch_size)])


def _select_row(value, row: int, batch: int):
    """Layer call arguments of a batch of `batch` sequences, for its sequence `row` alone: tensors with a batch
    dimension (at least 2-D with `batch` > 1 rows, e.g. a `[batch, 1, seq, seq]` mask) are sliced to `[row:row + 1]`;
    those broadcast over the batch (first dimension 1, e.g. rotary embeddings) and everything else are kept."""
    if isinstance(value, torch.Tensor):
        return value[row : row + 1] if batch > 1 and value.dim() >= 2 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {key: _select_row(item, row, batch) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_select_row(item, row, batch) for item in value)
    return value
