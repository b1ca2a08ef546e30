"""Scoring search candidates by calibration NLL, plainly or accelerated, with provably the same choices.

The plain scorer runs the whole model for every candidate, as the reference code does. The accelerated one
(1) caches the hidden states entering every decoder layer of the current model, so a candidate that changes layer
`i` only recomputes layers `i..L-1` and the head; (2) stops a candidate as soon as its partial sum of per-sequence
NLLs exceeds the best complete total (exact: every term is non-negative and sums are accumulated in the same order);
(3) tries the candidates that scored best in the previous step first, so the bound tightens early.
Ties go to the candidate that comes first in the reference order, as the reference's strict `<` does.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ArchitectureAdapter
from .candidates import Candidate
from .nll import sequence_nll


@dataclass
class SearchStats:
    """Work done by a scorer, in units of one full forward pass over the calibration set."""

    candidates_started: int = 0
    candidates_stopped_early: int = 0
    layer_passes: int = 0  # decoder-layer forward passes over one batch
    head_passes: int = 0  # final norm + lm_head + loss over one batch
    seconds: float = 0.0
    layer_weight: float = 1.0  # parameters of one dense decoder layer
    head_weight: float = 1.0  # parameters of the lm_head
    num_layers: int = 1
    num_batches: int = 1

    @property
    def full_forward_equivalents(self) -> float:
        """Passes weighted by the parameters they run, divided by one forward of the whole calibration set."""
        work = self.layer_passes * self.layer_weight + self.head_passes * self.head_weight
        return work / ((self.num_layers * self.layer_weight + self.head_weight) * self.num_batches)

    def reset_counters(self) -> None:
        """Start counting anew (a new stage on the same calibration set)."""
        self.candidates_started = self.candidates_stopped_early = self.layer_passes = self.head_passes = 0
        self.seconds = 0.0

    def to_dict(self) -> dict:
        return {
            "candidates_started": self.candidates_started,
            "candidates_stopped_early": self.candidates_stopped_early,
            "layer_passes": self.layer_passes,
            "head_passes": self.head_passes,
            "full_forward_equivalents": round(self.full_forward_equivalents, 3),
            "seconds": round(self.seconds, 3),
        }


TrialFactory = Callable[[Candidate], AbstractContextManager]


class CandidateScorer:
    """Finds the candidate whose removal gives the lowest calibration perplexity on the current model."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchitectureAdapter,
        sequences: torch.Tensor,
        batch_size: int,
        ignore_index: Optional[int] = None,
        accelerated: bool = True,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.layers = adapter.decoder_layers(model)
        self.ignore_index = ignore_index
        self.accelerated = accelerated
        self.progress = progress
        device = next(model.parameters()).device
        self.batches = [batch.to(device) for batch in sequences.split(batch_size)]  # each [batch, seq_len]
        self.num_sequences = len(sequences)
        self.stats = SearchStats(
            layer_weight=sum(p.numel() for p in self.layers[0].parameters()),
            head_weight=model.get_output_embeddings().weight.numel(),
            num_layers=len(self.layers),
            num_batches=len(self.batches),
        )
        self._previous_totals: dict[Candidate, float] = {}
        self._layer_inputs: list[list[torch.Tensor]] = []  # [layer][batch] -> [batch, seq_len, hidden]
        self._layer_kwargs: list[list[dict]] = []  # [layer][batch] -> keyword arguments of the layer call
        start = time.perf_counter()
        self.base_total = self._capture() if accelerated else self._full_total()
        self.stats.seconds += time.perf_counter() - start

    # ------------------------------------------------------------------ public API
    @property
    def base_perplexity(self) -> float:
        """Calibration perplexity of the model as it is now (before the next step)."""
        return self.to_perplexity(self.base_total)

    def to_perplexity(self, total: float) -> float:
        return math.exp(total / self.num_sequences)

    @torch.no_grad()
    def select(self, candidates: Sequence[Candidate], trial: TrialFactory, description: str = "candidates"):
        """Return `(best candidate, its NLL total)`: lowest total, ties to the earliest candidate in `candidates`."""
        start = time.perf_counter()
        order = range(len(candidates))
        if self.accelerated:
            order = sorted(order, key=lambda k: (self._previous_totals.get(candidates[k], math.inf), k))
        best_index, best_total = None, math.inf
        for k in tqdm(order, desc=description, disable=not self.progress, leave=False):
            candidate = candidates[k]
            with trial(candidate):
                total, complete = self._score(candidate, k, best_index, best_total)
            self._previous_totals[candidate] = total
            if complete and (total < best_total or (total == best_total and k < best_index)):
                best_index, best_total = k, total
        self.stats.seconds += time.perf_counter() - start
        return candidates[best_index], best_total

    @torch.no_grad()
    def committed(self, candidate: Candidate, total: float) -> None:
        """Tell the scorer `candidate` was applied for good; refresh cached layer inputs after its layer."""
        start = time.perf_counter()
        self._previous_totals.pop(candidate, None)
        self.base_total = total
        if self.accelerated:
            first = candidate.layer
            for b in range(len(self.batches)):
                hidden = self._layer_inputs[first][b]
                for i in range(first, len(self.layers) - 1):
                    hidden = self._run_layer(i, b, hidden)
                    self._layer_inputs[i + 1][b] = hidden
        self.stats.seconds += time.perf_counter() - start

    # ------------------------------------------------------------------ scoring
    def _score(self, candidate: Candidate, index: int, best_index: Optional[int], best_total: float):
        """NLL total of the model with `candidate` applied; `complete=False` if stopped because it cannot win."""
        self.stats.candidates_started += 1
        if not self.accelerated:
            return self._full_total(), True
        partial = 0.0
        for b in range(len(self.batches)):
            hidden = self._layer_inputs[candidate.layer][b]
            for i in range(candidate.layer, len(self.layers)):
                hidden = self._run_layer(i, b, hidden)
            partial += self._head_nll(hidden, self.batches[b])
            cannot_win = partial > best_total or (partial == best_total and index > best_index)
            if cannot_win and b < len(self.batches) - 1:
                self.stats.candidates_stopped_early += 1
                return partial, False
        return partial, True

    def _run_layer(self, i: int, b: int, hidden: torch.Tensor) -> torch.Tensor:
        self.stats.layer_passes += 1
        return self.layers[i](hidden, **self._layer_kwargs[i][b])

    def _head_nll(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> float:
        """Final norm, lm_head and the summed per-sequence mean NLL of one batch."""
        self.stats.head_passes += 1
        logits = self.model.get_output_embeddings()(self.adapter.final_norm(self.model)(hidden))
        return sequence_nll(logits, input_ids, self.ignore_index).sum().item()

    def _full_total(self) -> float:
        """Reference evaluation: a whole-model forward per batch."""
        return sum(self._batch_total(b) for b in range(len(self.batches)))

    def _batch_total(self, b: int) -> float:
        batch = self.batches[b]
        logits = self.model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False).logits
        self.stats.layer_passes += len(self.layers)
        self.stats.head_passes += 1
        return sequence_nll(logits, batch, self.ignore_index).sum().item()

    def _capture(self) -> float:
        """One whole-model forward per batch that records every layer's input and call arguments."""
        num_batches = len(self.batches)
        self._layer_inputs = [[None] * num_batches for _ in self.layers]
        self._layer_kwargs = [[None] * num_batches for _ in self.layers]
        current = {"batch": 0}

        def recorder(i: int):
            def hook(module, args, kwargs):
                self._layer_inputs[i][current["batch"]] = args[0] if args else kwargs["hidden_states"]
                self._layer_kwargs[i][current["batch"]] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

            return hook

        handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        total = 0.0
        try:
            with torch.no_grad():
                for b in range(num_batches):
                    current["batch"] = b
                    total += self._batch_total(b)
        finally:
            for handle in handles:
                handle.remove()
        return total
