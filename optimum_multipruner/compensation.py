"""Training-free compensation of a pruned model: a least-squares refit of the kept input columns of every narrowed
output projection (attention `o_proj` after KV groups were removed, MLP `down_proj` after channels were removed).

Layer by layer through the *pruned* model, on calibration text: with `X` the projection's input (the kept heads' or
channels' activations) and `T` the dense sub-block's output on the pruned sub-block's own input (minus the bias),
the new weight is the ridge solution toward the sliced original weight `W0`,

    W = argmin |X W^T - T|^2 + lam |W - W0|^2 = ((X^T X + lam I)^-1 (X^T T + lam W0^T))^T,
    lam = alpha * mean(diag(X^T X)),

attention before the MLP of the same layer (the MLP's input follows from the refitted attention), and each layer's
output computed after its refits feeds the next layer. Removed and unnarrowed sub-blocks are left as they are.
Its settings are a `CompensationConfig`. Measured on SmolLM2-135M (`benchmarks/compensation.py`, benchmarks/RESULTS.md): `alpha=0.1` lowers held-out Alpaca
and WikiText-2 perplexity at 10% and 20%; the smaller values tried fit the calibration domain closer and raise
WikiText-2 perplexity.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ArchitectureAdapter
from .configuration import CompensationConfig
from .devices import decoder_layer_devices, move_to_device
from .surgery import has_attention, has_mlp

if TYPE_CHECKING:
    from .record import PruningRecord

ATTENTION, MLP = "attention", "mlp"


class RidgeFit:
    """Running `X^T X`, `X^T T` and `|T|^2` (float64) of a linear layer's input `X` and its target output `T`."""

    def __init__(self, in_features: int, out_features: int, device: torch.device) -> None:
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.cross = torch.zeros(in_features, out_features, dtype=torch.float64, device=device)
        self.target_energy = 0.0

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).double()  # [tokens, in]
        t = targets.reshape(-1, targets.shape[-1]).double()  # [tokens, out]
        self.gram += x.T @ x
        self.cross += x.T @ t
        self.target_energy += float((t * t).sum())

    def solve(self, weight: torch.Tensor, alpha: float) -> torch.Tensor:
        """`[out, in]` in `weight`'s dtype: the ridge solution toward `weight`, `lam = alpha * mean(diag(X^T X))`."""
        lam = alpha * float(self.gram.diagonal().mean())
        eye = torch.eye(len(self.gram), dtype=torch.float64, device=self.gram.device)
        solution = torch.linalg.solve(self.gram + lam * eye, self.cross + lam * weight.detach().double().T)
        return solution.T.to(weight.dtype)

    def relative_error(self, weight: torch.Tensor) -> float:
        """`|X W^T - T|^2 / |T|^2`, from the running sums."""
        w = weight.detach().double().T  # [in, out]
        error = self.target_energy - 2 * float((w * self.cross).sum()) + float((w * (self.gram @ w)).sum())
        return error / self.target_energy


class DenseBranches:
    """Copies of the dense attention / MLP branches of a model, each taken before pruning first narrows it: the
    targets of `compensate`. Only the branches that get narrowed are copied."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter) -> None:
        self.layers = adapter.decoder_layers(model)
        self.adapter = adapter
        self.copies: dict[tuple[int, str], nn.Module] = {}

    def keep(self, layer: int, kind: str) -> None:
        """Copy branch `kind` (`"attention"` or `"mlp"`) of decoder layer `layer`, unless it was copied already."""
        if (layer, kind) not in self.copies:
            self.copies[(layer, kind)] = copy.deepcopy(self._branch(self.layers[layer], kind))

    def _branch(self, layer: nn.Module, kind: str) -> nn.Module:
        return self.adapter.attention(layer) if kind == ATTENTION else self.adapter.mlp(layer)

    def narrowed(self, layer: int) -> list[tuple[str, nn.Module, nn.Module, nn.Linear]]:
        """`(kind, live branch, dense copy, live output projection)` of the layer's branches that are kept but now
        narrower than their dense copy, attention first."""
        found = []
        live_layer = self.layers[layer]
        kept = {ATTENTION: has_attention(live_layer, self.adapter), MLP: has_mlp(live_layer, self.adapter)}
        for kind in (ATTENTION, MLP):
            dense = self.copies.get((layer, kind))
            if dense is None or not kept[kind]:
                continue
            live = self._branch(live_layer, kind)
            projection, dense_projection = self._output_projection(live, kind), self._output_projection(dense, kind)
            if projection.in_features < dense_projection.in_features:
                found.append((kind, live, dense, projection))
        return found

    def _output_projection(self, branch: nn.Module, kind: str) -> nn.Linear:
        if kind == ATTENTION:
            return self.adapter.attention_output_projection(branch)
        return self.adapter.mlp_output_projection(branch)


def _hidden_states(output: Any) -> torch.Tensor:
    """A module's hidden-state output (attention modules and some decoder layers return a tuple with it first)."""
    return output[0] if isinstance(output, tuple) else output


def _layer_calls(model: nn.Module, layers: nn.ModuleList,
                 sequences: torch.Tensor) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Per sequence, the hidden states entering the first decoder layer, and per layer and sequence, the keyword
    arguments the model calls that layer with (rotary embeddings, mask, ...): one decoder forward per sequence."""
    devices = decoder_layer_devices(model, layers)
    first_inputs: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def recorder(i: int) -> Callable:
        def hook(module, args, call_kwargs):
            if i == 0:
                first_inputs.append(args[0] if args else call_kwargs["hidden_states"])
            arguments = {k: v for k, v in call_kwargs.items() if k != "hidden_states"}
            kwargs[i].append(move_to_device(arguments, devices[i]))
        return hook

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = model.get_input_embeddings().weight.device
    try:
        for sequence in sequences:
            batch = sequence[None].to(device)
            model.get_decoder()(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return first_inputs, kwargs


def _fit(layer: nn.Module, branch: nn.Module, dense: nn.Module, projection: nn.Linear, hidden: list[torch.Tensor],
         kwargs: list[dict]) -> RidgeFit:
    """Run `layer` on every sequence and collect the ridge statistics of `projection`, the output projection of
    `branch`: its input, and as target the `dense` branch's output on `branch`'s own input, minus the bias."""
    fit = RidgeFit(projection.in_features, projection.out_features, projection.weight.device)
    inputs: list[torch.Tensor] = []

    def take_input(module, args):
        inputs.append(args[0])

    def take_target(module, args, call_kwargs, output):
        target = _hidden_states(dense(*args, **call_kwargs))
        fit.add(inputs.pop(), target if projection.bias is None else target - projection.bias)

    handles = [projection.register_forward_pre_hook(take_input),
               branch.register_forward_hook(take_target, with_kwargs=True)]
    try:
        for h, call_kwargs in zip(hidden, kwargs):
            layer(h, **call_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return fit


@torch.no_grad()
def compensate(model: nn.Module, dense_branches: DenseBranches, sequences: torch.Tensor,
               config: CompensationConfig, progress: bool = False) -> list[dict[str, Any]]:
    """Refit, in place, the output projection of every branch of the pruned `model` that is narrower than its copy
    in `dense_branches`, on the calibration `sequences` (`[n, seq_len]` token ids), layer by layer (module docstring).

    Returns one entry per refit: layer, branch kind, kept inputs, and the relative reconstruction error
    `|X W^T - T|^2 / |T|^2` on the calibration text before and after.
    """
    layers = dense_branches.layers
    devices = decoder_layer_devices(model, layers)
    hidden, kwargs = _layer_calls(model, layers, sequences)
    refits = []
    for i, layer in enumerate(tqdm(layers, desc="compensation", disable=not progress, leave=False)):
        hidden = [h.to(devices[i]) for h in hidden]
        for kind, branch, dense, projection in dense_branches.narrowed(i):
            fit = _fit(layer, branch, dense, projection, hidden, kwargs[i])
            refit = {"layer": i, "kind": kind, "kept_inputs": projection.in_features,
                     "relative_error_before": fit.relative_error(projection.weight)}
            projection.weight.copy_(fit.solve(projection.weight, config.alpha))
            refits.append({**refit, "relative_error_after": fit.relative_error(projection.weight)})
        hidden = [_hidden_states(layer(h, **call_kwargs)) for h, call_kwargs in zip(hidden, kwargs[i])]
    return refits


def compensate_record(record: PruningRecord, model: nn.Module, dense_branches: DenseBranches, sequences: torch.Tensor,
                      config: CompensationConfig, progress: bool) -> PruningRecord:
    """[`compensate`] the narrowed sub-blocks of `model` toward their dense copies and return `record` noting it (its
    `compensation`: alpha, the calibration text's size and the refits)."""
    refits = compensate(model, dense_branches, sequences, config, progress)
    return dataclasses.replace(record, compensation={
        "alpha": config.alpha, "calibration_sequences": len(sequences), "sequence_length": sequences.shape[1],
        "refits": refits})
