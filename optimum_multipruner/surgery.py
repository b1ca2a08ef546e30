"""Physical model surgery: sub-block removal, width slicing, weight reordering, reading a live model's structure."""

from __future__ import annotations

from typing import Any

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


def read_structure(model: nn.Module, adapter: ArchitectureAdapter) -> PrunedStructure:
    """The structure a (possibly pruned) live model has right now."""
    layout = adapter.attention_layout(model.config)
    heads, kv_heads, widths = [], [], []
    for layer in adapter.decoder_layers(model):
        kv = 0 if isinstance(layer.self_attn, ZeroAttention) else adapter.kv_heads(layer.self_attn, layout)
        kv_heads.append(kv)
        heads.append(kv * layout.heads_per_group)
        widths.append(0 if isinstance(layer.mlp, ZeroMLP) else adapter.mlp_width(layer.mlp))
    return PrunedStructure(heads, kv_heads, widths)


# --------------------------------------------------------------------------- removal and slicing
def remove_attention(layer: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Skip the attention branch: parameter-free `ZeroAttention`, and its pre-norm becomes `Identity`."""
    layer.self_attn = ZeroAttention()
    for name in adapter.attention_norms:
        setattr(layer, name, nn.Identity())


def remove_mlp(layer: nn.Module, adapter: ArchitectureAdapter) -> None:
    layer.mlp = ZeroMLP()
    for name in adapter.mlp_norms:
        setattr(layer, name, nn.Identity())


def keep_first_kv_groups(layer: nn.Module, adapter: ArchitectureAdapter, layout: AttentionLayout, groups: int) -> None:
    """Keep the first `groups` KV groups of the layer's attention (0 removes the sub-block)."""
    if groups == 0:
        remove_attention(layer, adapter)
    elif groups < adapter.kv_heads(layer.self_attn, layout):
        adapter.select_kv_groups(layer.self_attn, torch.arange(groups), layout)


def keep_first_mlp_channels(layer: nn.Module, adapter: ArchitectureAdapter, width: int) -> None:
    """Keep the first `width` intermediate channels of the layer's MLP (0 removes the sub-block)."""
    if width == 0:
        remove_mlp(layer, adapter)
    elif width < adapter.mlp_width(layer.mlp):
        adapter.select_mlp_channels(layer.mlp, torch.arange(width))


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


@torch.no_grad()
def reorder_by_weight_magnitude(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Sort each layer's KV groups and MLP channels by descending L1 weight score (function-preserving).

    Afterwards removing the tail group of a layer removes its least important group, as in the reference.
    """
    layout = adapter.attention_layout(model.config)
    for layer in adapter.decoder_layers(model):
        if not isinstance(layer.self_attn, ZeroAttention):
            order = torch.sort(adapter.kv_group_scores(layer.self_attn, layout), descending=True, stable=True).indices
            adapter.select_kv_groups(layer.self_attn, order, layout)
        if not isinstance(layer.mlp, ZeroMLP):
            order = torch.sort(adapter.mlp_channel_scores(layer.mlp), descending=True, stable=True).indices
            adapter.select_mlp_channels(layer.mlp, order)


def compact_cache_slots(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Give each remaining attention the KV-cache slot of its rank among remaining attentions.

    A removed attention never writes the cache, while the cache length and mask sizes are read from slot 0; without
    compact slots cached generation is silently wrong whenever an early layer has no attention.
    """
    layer_types = getattr(model.config, "layer_types", None)
    attentions = [layer.self_attn for layer in adapter.decoder_layers(model)]
    if layer_types and len(set(layer_types)) > 1 and any(isinstance(a, ZeroAttention) for a in attentions):
        raise ValueError(
            "Removing attention blocks from a model that mixes sliding-window and full attention layers "
            f"({sorted(set(layer_types))}) is not supported."
        )
    kept = [a for a in attentions if not isinstance(a, ZeroAttention)]
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
