"""Baselines to compare the searches against: whole-layer removal by block influence (ShortGPT, Men et al., 2024).

The block influence (BI) of decoder layer `i` is `1 - mean cosine similarity` between the hidden state entering the
layer and the one leaving it, over every calibration token. It is computed once, on the dense model; the layers with
the lowest BI are then removed (attention and MLP sub-blocks with their pre-norms) until the target share of all
parameters is gone. The result is a pruned model of the registered class, saved and loaded like any other, and a
`PruningRecord` of the removals that `MultiPruner(dense_model).apply(record)` rebuilds it from.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .architectures import get_adapter
from .candidates import REMOVE_ATTENTION, REMOVE_MLP
from .configuration import BLOCK_STAGE
from .modeling import to_pruned_model
from .record import PruningRecord, PruningStep
from .surgery import (
    PrunedStructure,
    count_parameters,
    dense_parameter_count,
    read_structure,
    remove_attention,
    remove_mlp,
)
from .utils import get_logger

logger = get_logger(__name__)

LAYER_REMOVAL_SOURCE = "block-influence-layer-removal"


@torch.no_grad()
def block_influence(
    model: nn.Module, sequences: torch.Tensor, batch_size: int = 1, progress: bool = False
) -> list[float]:
    """Per decoder layer: `1 - mean cosine(hidden in, hidden out)` over all tokens of `sequences` (`[n, seq_len]`)."""
    layers = get_adapter(model).decoder_layers(model)
    similarity_sums = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}

    def keep_input(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def add_similarity(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden_out = output[0] if isinstance(output, tuple) else output
            cosine = F.cosine_similarity(inputs.pop(index).double(), hidden_out.double(), dim=-1)  # [batch, seq_len]
            similarity_sums[index] += cosine.sum().item()
        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep_input(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(add_similarity(index), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        decoder = model.get_decoder()  # the decoder stack without `lm_head`: its logits are not needed
        for start in tqdm(range(0, len(sequences), batch_size), desc="block influence", disable=not progress):
            batch = sequences[start : start + batch_size].to(model.device)
            decoder(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return (1 - similarity_sums / sequences.numel()).tolist()


def prune_layers_by_block_influence(
    model: nn.Module,
    sequences: torch.Tensor,
    target_ratio: float,
    batch_size: int = 1,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove whole decoder layers, lowest block influence first, until `target_ratio` of all parameters is gone.

    `sequences` (`[n, seq_len]` token ids) is the calibration text. The ratio is the pruner's,
    `1 - count_parameters(model) / dense_parameter_count(config)`, and is overshot by at most one layer; at least one
    layer is always kept. Returns the (same, now pruned) model and a JSON-ready dict: the BI of every layer, the
    removed layers in removal order, the ratio reached, whether it reached the target, and `record`, the removals as a
    `PruningRecord` dict (each layer is two block steps, attention then MLP; no weight reorder; the block influence in
    its `search_stats`): `MultiPruner(dense_model).apply(PruningRecord.from_dict(info["record"]))` rebuilds the model.
    """
    if not 0 < target_ratio < 1:
        raise ValueError(f"`target_ratio` must be in (0, 1) (a share of all parameters), got {target_ratio!r}.")
    adapter = get_adapter(model)
    if read_structure(model, adapter) != PrunedStructure.dense(model.config, adapter):
        raise ValueError("Block influence is measured on the dense model; this one is already pruned.")
    influence = block_influence(model, sequences, batch_size, progress)
    dense_parameters = dense_parameter_count(model.config, adapter)
    layers = adapter.decoder_layers(model)
    order = sorted(range(len(layers)), key=lambda index: influence[index])  # stable: ties go to the earlier layer
    removed: list[int] = []
    steps: list[PruningStep] = []
    ratio = 0.0
    for index in order[:-1]:
        if ratio >= target_ratio:
            break
        for action, remove in ((REMOVE_ATTENTION, remove_attention), (REMOVE_MLP, remove_mlp)):
            remove(layers[index], adapter)
            ratio = 1 - count_parameters(model) / dense_parameters
            steps.append(PruningStep(len(steps) + 1, BLOCK_STAGE, action, index, None, ratio, count_parameters(model),
                                     0))
        removed.append(index)
        logger.info("Removed layer %d (block influence %.4f): %.2f%% removed", index, influence[index], 100 * ratio)
    if ratio < target_ratio:
        logger.warning("Removing all but one layer reaches only %.4f of the target %.4f.", ratio, target_ratio)
    structure = read_structure(model, adapter)
    pruned = to_pruned_model(model, adapter, structure)
    record = PruningRecord(
        model_type=adapter.model_type,
        num_hidden_layers=len(layers),
        dense_parameters=dense_parameters,
        structure=structure,
        weight_reorder=False,
        steps=steps,
        search_stats={"block_influence": influence, "num_calibration_tokens": sequences.numel()},
        source=LAYER_REMOVAL_SOURCE,
        target_reached=ratio >= target_ratio,
    )
    info = {
        "method": "block_influence_layer_removal",
        "block_influence": influence,
        "removed_layers": removed,
        "ratio": ratio,
        "target_ratio": target_ratio,
        "target_reached": ratio >= target_ratio,
        "num_parameters": count_parameters(pruned),
        "dense_parameters": dense_parameters,
        "num_calibration_tokens": sequences.numel(),
        "record": record.to_dict(),
    }
    return pruned, info
