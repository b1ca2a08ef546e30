"""The statistics of a race between candidates: each candidate's per-sequence losses (`Tally`), their ranking
(`rank_key`) and the paired test of the tie rule (`tied_with_leader`)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..nll import SequenceLosses


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
