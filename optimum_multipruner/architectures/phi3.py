from __future__ import annotations

import torch
from torch import nn
from transformers import Phi3Config, Phi3ForCausalLM

from ..compat import (
    ALL_ATTENTION_FUNCTIONS,
    Phi3Attention,
    apply_rotary_pos_emb,
    attention_implementation,
    eager_attention_forward,
)
from .base import (
    ArchitectureAdapter,
    AttentionLayout,
    DecoderLayerLayout,
    kv_group_rows,
    register_adapter,
    select_linear,
)


class PrunedPhi3Attention(Phi3Attention):
    """Phi-3 attention whose fused q/k/v split uses this module's own head counts.

    Stock Phi-3 reads the query width from the global config, which stays dense in a pruned checkpoint.
    """

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_width = self.num_key_value_heads * self.num_key_value_groups * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim

        qkv = self.qkv_proj(hidden_states)  # [batch, seq, query_width + 2 * kv_width]
        query_states = qkv[..., :query_width].view(hidden_shape).transpose(1, 2)
        key_states = qkv[..., query_width : query_width + kv_width].view(hidden_shape).transpose(1, 2)
        value_states = qkv[..., query_width + kv_width :].view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attention_implementation(self.config), eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=getattr(self.config, "sliding_window", None),
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [batch, seq, query_width]
        return self.o_proj(attn_output), attn_weights


@register_adapter
class Phi3Adapter(ArchitectureAdapter):
    """Phi-3: fused `qkv_proj` (rows `[q; k; v]`) and fused `gate_up_proj` (rows `[gate; up]`); pre-norm layers with
    a (parameter-free) dropout on each branch output."""

    model_type = "phi3"
    display_name = "Phi-3"
    stem = "Phi3"
    config_class = Phi3Config
    causal_lm_class = Phi3ForCausalLM
    layer_layout = DecoderLayerLayout(
        attention="self_attn",
        mlp="mlp",
        attention_norms=("input_layernorm",),
        mlp_norms=("post_attention_layernorm",),
        other=("resid_attn_dropout", "resid_mlp_dropout"),
    )

    def kv_heads(self, attention: nn.Module, layout: AttentionLayout) -> int:
        return attention.num_key_value_heads

    def mlp_width(self, mlp: nn.Module) -> int:
        return mlp.down_proj.in_features

    def qkv_weights(self, attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv_width = attention.num_key_value_heads * attention.head_dim
        query_width = attention.qkv_proj.out_features - 2 * kv_width
        return attention.qkv_proj.weight.split([query_width, kv_width, kv_width], dim=0)

    def gate_up_weights(self, mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return mlp.gate_up_proj.weight.chunk(2, dim=0)

    def select_kv_groups(self, attention: nn.Module, groups: torch.Tensor, layout: AttentionLayout) -> None:
        kv_width = attention.num_key_value_heads * layout.head_dim
        query_width = attention.num_key_value_heads * layout.group_width
        q_rows = kv_group_rows(groups, layout.group_width)
        kv_rows = kv_group_rows(groups, layout.head_dim)
        fused_rows = torch.cat([q_rows, query_width + kv_rows, query_width + kv_width + kv_rows])
        attention.qkv_proj = select_linear(attention.qkv_proj, fused_rows, dim=0)
        attention.o_proj = select_linear(attention.o_proj, q_rows, dim=1)
        attention.num_key_value_heads = len(groups)
        attention.__class__ = PrunedPhi3Attention

    def select_mlp_channels(self, mlp: nn.Module, channels: torch.Tensor) -> None:
        width = self.mlp_width(mlp)
        mlp.gate_up_proj = select_linear(mlp.gate_up_proj, torch.cat([channels, width + channels]), dim=0)
        mlp.down_proj = select_linear(mlp.down_proj, channels, dim=1)
