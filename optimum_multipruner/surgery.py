"""Physical model surgery: sub-block removal, width slicing, weight reordering, reading a live model's structure.

Which modules a layer has and where they sit is the family's adapter's knowledge (`architectures/`); this module only
goes through it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .architectures import ArchitectureAdapter, AttentionLayout
from .structure import PrunedStructure

class ZeroAttention(nn.Module):
    """Stands in for a removed attention sub-block: no parameters, adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """Stands in for a removed MLP sub-block: no parameters, adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def has_attention(layer: nn.Module, adapter: ArchitectureAdapter) -> bool:
    return not isinstance(adapter.attention(layer), ZeroAttention)


def has_mlp(layer: nn.Module, adapter: ArchitectureAdapter) -> bool:
    return not isinstance(adapter.mlp(layer), ZeroMLP)


def read_structure(model: nn.Module, adapter: ArchitectureAdapter) -> PrunedStructure:
    """The structure a (possibly pruned) live model has right now; `ValueError` for a layer of unknown layout."""
    layout = adapter.attention_layout(model.config)
    heads, kv_heads, widths = [], [], []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        adapter.check_layer(layer, i)
        kv = adapter.kv_heads(adapter.attention(layer), layout) if has_attention(layer, adapter) else 0
        kv_heads.append(kv)
        heads.append(kv * layout.heads_per_group)
        widths.append(adapter.mlp_width(adapter.mlp(layer)) if has_mlp(layer, adapter) else 0)
    return PrunedStructure(heads, kv_heads, widths)


# --------------------------------------------------------------------------- removal and slicing
def remove_attention(layer: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Skip the attention branch: parameter-free `ZeroAttention`, and the norms of the branch become `Identity`."""
    adapter.replace_attention(layer, ZeroAttention())


def remove_mlp(layer: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Skip the MLP branch: parameter-free `ZeroMLP`, and the norms of the branch become `Identity`."""
    adapter.replace_mlp(layer, ZeroMLP())


def keep_first_kv_groups(layer: nn.Module, adapter: ArchitectureAdapter, layout: AttentionLayout, groups: int) -> None:
    """Keep the first `groups` KV groups of the layer's attention (0 removes the sub-block)."""
    attention = adapter.attention(layer)
    if groups == 0:
        remove_attention(layer, adapter)
    elif groups < adapter.kv_heads(attention, layout):
        adapter.select_kv_groups(attention, torch.arange(groups), layout)


def keep_first_mlp_channels(layer: nn.Module, adapter: ArchitectureAdapter, width: int) -> None:
    """Keep the first `width` intermediate channels of the layer's MLP (0 removes the sub-block)."""
    mlp = adapter.mlp(layer)
    if width == 0:
        remove_mlp(layer, adapter)
    elif width < adapter.mlp_width(mlp):
        adapter.select_mlp_channels(mlp, torch.arange(width))


def apply_structure(model: nn.Module, adapter: ArchitectureAdapter, structure: PrunedStructure) -> None:
    """Shrink every layer to `structure`, keeping the first heads/channels (after any reordering).

    Checks the whole structure against the model before changing anything.
    """
    structure.validate(model.config, adapter)
    current = read_structure(model, adapter)
    for i, (kv, width, kv_now, width_now) in enumerate(
        zip(structure.num_key_value_heads, structure.intermediate_size, current.num_key_value_heads,
            current.intermediate_size)
    ):
        if kv > kv_now or width > width_now:
            raise ValueError(
                f"Layer {i} has {kv_now} KV heads and MLP width {width_now}; it cannot grow to {kv} / {width}."
            )
    layout = adapter.attention_layout(model.config)
    for layer, kv, width in zip(adapter.decoder_layers(model), structure.num_key_value_heads, structure.intermediate_size):
        keep_first_kv_groups(layer, adapter, layout, kv)
        keep_first_mlp_channels(layer, adapter, width)


LayerOrder = tuple[Optional[torch.Tensor], Optional[torch.Tensor]]  # (KV groups, MLP channels); None where removed


@torch.no_grad()
def weight_magnitude_orders(model: nn.Module, adapter: ArchitectureAdapter) -> list[LayerOrder]:
    """Per layer: its KV groups and its MLP channels by descending L1 weight score (stable sort), changing nothing.

    The scores are float32 (or wider) whatever the weights' dtype, so the same weight values give the same orders in
    bfloat16 and in float32.
    """
    layout = adapter.attention_layout(model.config)
    orders = []
    for layer in adapter.decoder_layers(model):
        kv_order = mlp_order = None
        if has_attention(layer, adapter):
            scores = adapter.kv_group_scores(adapter.attention(layer), layout)  # [kv_heads]
            kv_order = torch.sort(scores, descending=True, stable=True).indices
        if has_mlp(layer, adapter):
            scores = adapter.mlp_channel_scores(adapter.mlp(layer))  # [intermediate]
            mlp_order = torch.sort(scores, descending=True, stable=True).indices
        orders.append((kv_order, mlp_order))
    return orders


def layers_keeping_other_units(orders: list[LayerOrder], other: list[LayerOrder],
                               structure: PrunedStructure) -> list[int]:
    """The layers in which `other` orders keep another set of KV groups or MLP channels under `structure`."""
    layers = []
    kept = zip(structure.num_key_value_heads, structure.intermediate_size)
    for i, (layer_orders, other_orders, sizes) in enumerate(zip(orders, other, kept)):
        for order, other_order, size in zip(layer_orders, other_orders, sizes):
            if not torch.equal(order[:size].sort().values, other_order[:size].sort().values):
                layers.append(i)
                break
    return layers


@torch.no_grad()
def reorder_by_weight_magnitude(model: nn.Module, adapter: ArchitectureAdapter,
                                orders: Optional[list[LayerOrder]] = None) -> list[LayerOrder]:
    """Sort each layer's KV groups and MLP channels by descending L1 weight score (function-preserving).

    Afterwards removing the tail group of a layer removes its least important group, as in the reference. `orders`
    (e.g. a record's) replace those of `weight_magnitude_orders`; the orders applied are returned.
    """
    orders = weight_magnitude_orders(model, adapter) if orders is None else orders
    layout = adapter.attention_layout(model.config)
    for layer, (kv_order, mlp_order) in zip(adapter.decoder_layers(model), orders):
        if kv_order is not None:
            adapter.select_kv_groups(adapter.attention(layer), kv_order, layout)
        if mlp_order is not None:
            adapter.select_mlp_channels(adapter.mlp(layer), mlp_order)
    return orders


def compact_cache_slots(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Give each remaining attention the KV-cache slot of its rank among remaining attentions.

    A removed attention never writes the cache, while the cache length and mask sizes are read from slot 0; without
    compact slots cached generation is silently wrong whenever an early layer has no attention. `ValueError` if an
    attention was removed from a model whose adapter does not allow it (`attention_removal_blocker`).
    """
    layers = adapter.decoder_layers(model)
    kept = [adapter.attention(layer) for layer in layers if has_attention(layer, adapter)]
    blocker = adapter.attention_removal_blocker(model.config) if len(kept) < len(layers) else None
    if blocker is not None:
        raise ValueError(f"Cannot remove attention blocks: {blocker}.")
    for slot, attention in enumerate(kept):
        attention.layer_idx = slot


def count_parameters(model: nn.Module) -> int:
    """All parameters, embeddings and `lm_head` included (tied weights once), as the reference methods count them."""
    return sum(p.numel() for p in model.parameters())


def dense_parameter_count(config, adapter: ArchitectureAdapter) -> int:
    """Parameters of the dense model `config` describes (built on the meta device, no memory)."""
    dense_config = adapter.config_class.from_dict(
        {k: v for k, v in config.to_dict().items() if k not in ("pruning", "model_type", "architectures")}
    )
    with torch.device("meta"):
        dense = adapter.causal_lm_class(dense_config)
    return count_parameters(dense)
