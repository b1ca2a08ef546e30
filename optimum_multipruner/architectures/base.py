"""What MultiPruner needs to know about a decoder family, for families with separate q/k/v/o and gate/up/down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionLayout:
    """Dense attention geometry, read from the (dense) global config."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def heads_per_group(self) -> int:
        """Query heads that share one KV head (`n_rep`)."""
        return self.num_heads // self.num_kv_heads

    @property
    def group_width(self) -> int:
        """Query channels of one whole KV group: the smallest unit attention pruning removes."""
        return self.heads_per_group * self.head_dim


def select_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new `nn.Linear` keeping output rows (`dim=0`, bias too) or input columns (`dim=1`) `index`, in that order.

    Works on real and meta tensors, so the same code prunes a loaded model and shapes an empty one before loading.
    """
    index = index.to(linear.weight.device)
    weight = linear.weight.index_select(dim, index)  # dim 0: [len(index), in], dim 1: [out, len(index)]
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return new


def kv_group_rows(group_index: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """Row indices of whole groups: `[g0*r, ..., g0*r + r-1, g1*r, ...]`."""
    offsets = torch.arange(rows_per_group, device=group_index.device)
    return (group_index[:, None] * rows_per_group + offsets[None, :]).reshape(-1)


class ArchitectureAdapter:
    """Module names, projection layout and weight surgery of one decoder family.

    Subclasses set `model_type`, `config_class`, `causal_lm_class` and `stem`; families with fused projections
    override the projection methods. Every method that changes a module keeps whole KV groups.
    """

    model_type: ClassVar[str]
    stem: ClassVar[str]  # class-name stem, e.g. "Llama" -> MultiPrunedLlamaForCausalLM
    config_class: ClassVar[type]
    causal_lm_class: ClassVar[type]
    attention_norms: ClassVar[tuple[str, ...]] = ("input_layernorm",)
    mlp_norms: ClassVar[tuple[str, ...]] = ("post_attention_layernorm",)

    # ----------------------------------------------------------------- navigation
    @staticmethod
    def decoder_layers(model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    @staticmethod
    def final_norm(model: nn.Module) -> nn.Module:
        return model.model.norm

    @staticmethod
    def attention_layout(config) -> AttentionLayout:
        num_heads = config.num_attention_heads
        num_kv_heads = config.num_key_value_heads or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return AttentionLayout(num_heads, num_kv_heads, head_dim)

    # ----------------------------------------------------------------- widths of a live module
    def kv_heads(self, attention: nn.Module, layout: AttentionLayout) -> int:
        """KV heads an attention module currently has."""
        return attention.k_proj.out_features // layout.head_dim

    def mlp_width(self, mlp: nn.Module) -> int:
        return mlp.up_proj.out_features

    # ----------------------------------------------------------------- importance scores (weight-magnitude reordering)
    def kv_group_scores(self, attention: nn.Module, layout: AttentionLayout) -> torch.Tensor:
        """`[kv_heads]`: mean over a KV group's query rows of L1(q row) + L1(k row) + L1(v row) (reference rule)."""
        q, k, v = self.qkv_weights(attention)  # [kv*n_rep*hd, hidden], [kv*hd, hidden], [kv*hd, hidden]
        kv = k.shape[0] // layout.head_dim
        q_score = q.abs().sum(dim=1).view(kv, -1).mean(dim=1)  # [kv]
        kv_score = (k.abs().sum(dim=1) + v.abs().sum(dim=1)).view(kv, -1).mean(dim=1)  # [kv]
        return (q_score + kv_score).float()

    def mlp_channel_scores(self, mlp: nn.Module) -> torch.Tensor:
        """`[intermediate]`: L1(gate row) + L1(up row) (reference rule; down_proj is not scored)."""
        gate, up = self.gate_up_weights(mlp)
        return (gate.abs().sum(dim=1) + up.abs().sum(dim=1)).float()

    def qkv_weights(self, attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight

    def gate_up_weights(self, mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return mlp.gate_proj.weight, mlp.up_proj.weight

    # ----------------------------------------------------------------- surgery
    def select_kv_groups(self, attention: nn.Module, groups: torch.Tensor, layout: AttentionLayout) -> None:
        """Keep KV groups `groups` (in that order): their query heads, K/V heads and the matching o_proj columns."""
        q_rows = kv_group_rows(groups, layout.group_width)
        kv_rows = kv_group_rows(groups, layout.head_dim)
        attention.q_proj = select_linear(attention.q_proj, q_rows, dim=0)
        attention.k_proj = select_linear(attention.k_proj, kv_rows, dim=0)
        attention.v_proj = select_linear(attention.v_proj, kv_rows, dim=0)
        attention.o_proj = select_linear(attention.o_proj, q_rows, dim=1)

    def select_mlp_channels(self, mlp: nn.Module, channels: torch.Tensor) -> None:
        """Keep intermediate channels `channels` (in that order) of gate/up rows and down columns."""
        mlp.gate_proj = select_linear(mlp.gate_proj, channels, dim=0)
        mlp.up_proj = select_linear(mlp.up_proj, channels, dim=0)
        mlp.down_proj = select_linear(mlp.down_proj, channels, dim=1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(channels)
