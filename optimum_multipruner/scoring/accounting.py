"""`SearchStats`: the work a search's scoring does, counted in full forward passes over the calibration set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from .. import distributed


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
