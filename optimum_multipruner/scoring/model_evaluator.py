"""`ModelEvaluator`: candidates scored on the model itself, a round shared out between the processes of a distributed
search; the KL objective's reference hidden states.

How the model runs is a strategy, a [`ModelPass`]. The plain one (`WholeModelPass`) runs the whole model for every
candidate, as the reference code does. The accelerated one (`CachedLayerInputs`)
(1) caches the hidden states entering every decoder layer of the current model, so a candidate that changes layer
`i` only recomputes layers `i..L-1` and the head, one calibration sequence at a time; (2) stops a candidate, after any
sequence, as soon as its partial total exceeds the best complete total (exact: every per-sequence term is
non-negative, and totals are summed per batch of `batch_size` sequences, then over batches, as the plain evaluation
sums them); (3) tries the candidates that got furthest and scored best in the previous step first, so the bound
tightens early. Ties go to the candidate that comes first in the reference order, as the reference's strict `<` does.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
from torch import nn

from .. import distributed
from ..architectures import ArchitectureAdapter
from ..candidates import Candidate
from ..devices import DeviceLike, as_device, decoder_layer_devices, execution_device, move_to_device
from ..nll import DEFAULT_HEAD_CHUNK_SIZE, SequenceLosses, head_losses
from .accounting import SearchStats
from .evaluator import CandidateEvaluator, TrialFactory
from .race import Tally, rank_key


class ModelEvaluator(CandidateEvaluator):
    """Scores candidates on the model itself along a [`ModelPass`]: plainly (a whole forward per batch, as the
    reference) or accelerated (cached layer inputs, sequence by sequence, early stopping); a round is shared out
    between the processes of a distributed search.

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
        self.kl = reference is not None
        self.dtype = next(model.parameters()).dtype
        self.reference = reference
        self.head_chunk_size = head_chunk_size
        device = execution_device(model.get_input_embeddings())
        self.batches = [batch.to(device) for batch in sequences.split(batch_size)]  # each [batch, seq_len]
        self.batch_size = batch_size
        self.model_pass: ModelPass = CachedLayerInputs(self, cache_device) if accelerated else WholeModelPass(self)
        self.accelerated = self.model_pass.accelerated
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
        start = time.perf_counter()
        with torch.no_grad():  # the plain evaluation too: no autograd graph
            base = self.model_pass.start()
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
        layers = self.model_pass.layers_run(candidate)
        sequences = stop - (tally.done if tally is not None else 0)
        return (layers * self.stats.layer_weight + self.stats.head_weight) * sequences

    @torch.no_grad()
    def commit(self, candidate: Candidate, tally: Optional[Tally]) -> None:
        """Its losses become the current model's; the model pass takes up the model the choice leaves."""
        start = time.perf_counter()
        super().commit(candidate, tally)
        self.model_pass.commit(candidate)
        self.stats.seconds += time.perf_counter() - start

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int,
              bound: Optional[tuple[float, int]]) -> bool:
        return self.model_pass.score(candidate, index, tally, stop, bound)

    def head_losses(self, hidden: torch.Tensor, b: int, row: Optional[int] = None) -> SequenceLosses:
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

    def full_tally(self, tally: Optional[Tally] = None) -> Tally:
        """Reference evaluation: a whole-model forward per batch, filling `tally` (a new one if not given)."""
        tally = self.new_tally() if tally is None else tally
        for b in range(len(self.batches)):
            tally.fill(self.batch_starts[b], self.batch_losses(b))
        return tally

    def batch_losses(self, b: int) -> SequenceLosses:
        """Batch `b`'s per-sequence losses from one whole-model forward."""
        batch = self.batches[b]
        hidden = final_hidden_states(self.model, self.layers, batch)
        self.stats.layer_passes += len(self.layers) * len(batch)
        return self.head_losses(hidden, b)


class ModelPass:
    """How a [`ModelEvaluator`] runs the model: the strategy that `accelerated_search` chooses."""

    accelerated: bool  # scores sequence by sequence: prefixes and early stopping

    def __init__(self, evaluator: ModelEvaluator) -> None:
        self.evaluator = evaluator

    def start(self) -> Tally:
        """The current (unchanged) model's tally, taken once when the evaluator is made."""
        raise NotImplementedError

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int,
              bound: Optional[tuple[float, int]]) -> bool:
        """[`CandidateEvaluator.score`] along this pass."""
        raise NotImplementedError

    def layers_run(self, candidate: Candidate) -> int:
        """Decoder layers the pass runs per sequence to score `candidate`."""
        raise NotImplementedError

    def commit(self, candidate: Candidate) -> None:
        """`candidate` was applied for good: take up the model it leaves."""


class WholeModelPass(ModelPass):
    """The plain evaluation, as the reference: a whole forward of every batch for every candidate, never stopped."""

    accelerated = False

    def start(self) -> Tally:
        return self.evaluator.full_tally()

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int,
              bound: Optional[tuple[float, int]]) -> bool:
        self.evaluator.full_tally(tally)
        return True

    def layers_run(self, candidate: Candidate) -> int:
        return len(self.evaluator.layers)


class CachedLayerInputs(ModelPass):
    """The accelerated evaluation: the inputs of every decoder layer of the current model are cached, and a candidate
    runs, one sequence at a time, from the cached inputs of its layer, stopped early against its bound.

    `cache_device`: where the cached inputs live (default: the device each layer runs on).
    """

    accelerated = True

    def __init__(self, evaluator: ModelEvaluator, cache_device: Optional[DeviceLike] = None) -> None:
        super().__init__(evaluator)
        self.layer_devices = decoder_layer_devices(evaluator.model, evaluator.layers)  # accelerate's if dispatched
        self.cache_device = None if cache_device is None else as_device(cache_device)
        self.layer_inputs: list[list[torch.Tensor]] = []  # [layer][batch] -> [batch, seq_len, hidden], on its cache device
        self.layer_kwargs: list[list[dict]] = []  # [layer][batch] -> keyword arguments of the layer call, on its device

    def start(self) -> Tally:
        """One decoder forward per batch that records every layer's input (on its cache device) and call arguments
        (on the layer's device, copied once per device), then the head on the last layer's output."""
        evaluator = self.evaluator
        num_batches = len(evaluator.batches)
        self.layer_inputs = [[None] * num_batches for _ in evaluator.layers]
        self.layer_kwargs = [[None] * num_batches for _ in evaluator.layers]
        current = {"batch": 0, "moved": {}}

        def recorder(i: int):
            def hook(module, args, kwargs):
                b = current["batch"]
                hidden = args[0] if args else kwargs["hidden_states"]
                self.layer_inputs[i][b] = hidden.to(self._cache_device(i))
                arguments = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                self.layer_kwargs[i][b] = move_to_device(arguments, self.layer_devices[i], current["moved"])

            return hook

        handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True)
                   for i, layer in enumerate(evaluator.layers)]
        tally = evaluator.new_tally()
        try:
            for b in range(num_batches):
                current.update(batch=b, moved={})
                tally.fill(evaluator.batch_starts[b], evaluator.batch_losses(b))
        finally:
            for handle in handles:
                handle.remove()
        return tally

    def score(self, candidate: Candidate, index: int, tally: Tally, stop: int,
              bound: Optional[tuple[float, int]]) -> bool:
        """One sequence at a time from the cached inputs of the candidate's layer."""
        evaluator = self.evaluator
        while tally.done < stop:
            b, row = divmod(tally.done, evaluator.batch_size)
            hidden = self.layer_inputs[candidate.layer][b][row : row + 1]  # [1, seq_len, hidden]
            for i in range(candidate.layer, len(evaluator.layers)):
                hidden = self._run_layer(i, b, hidden, row)
            tally.fill(tally.done, evaluator.head_losses(hidden, b, row))
            if bound is not None and tally.done < stop and rank_key(evaluator.total(tally.objective), index) > bound:
                return False
        return True

    def layers_run(self, candidate: Candidate) -> int:
        return len(self.evaluator.layers) - candidate.layer

    def commit(self, candidate: Candidate) -> None:
        """Refresh the cached layer inputs after the candidate's layer."""
        first = candidate.layer
        for b in range(len(self.evaluator.batches)):
            hidden = self.layer_inputs[first][b]
            for i in range(first, len(self.evaluator.layers) - 1):
                hidden = self._run_layer(i, b, hidden)
                self.layer_inputs[i + 1][b] = hidden.to(self._cache_device(i + 1))

    def _run_layer(self, i: int, b: int, hidden: torch.Tensor, row: Optional[int] = None) -> torch.Tensor:
        """Layer `i` on batch `b`'s hidden states, or on its sequence `row` alone."""
        self.evaluator.stats.layer_passes += len(hidden)
        kwargs = self.layer_kwargs[i][b]
        if row is not None:
            kwargs = _select_row(kwargs, row, len(self.evaluator.batches[b]))
        return self.evaluator.layers[i](hidden.to(self.layer_devices[i]), **kwargs)

    def _cache_device(self, i: int) -> torch.device:
        """Where layer `i`'s cached inputs live: `cache_device` if given, else the device the layer runs on."""
        return self.layer_devices[i] if self.cache_device is None else self.cache_device


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
