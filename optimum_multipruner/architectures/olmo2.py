from typing import Optional

import torch
from torch import nn
from transformers import Olmo2Config, Olmo2ForCausalLM

from .base import ArchitectureAdapter, AttentionLayout, DecoderLayerLayout, kv_group_rows, register_adapter


def select_norm(norm: nn.Module, index: torch.Tensor) -> nn.Module:
    """A new RMSNorm of `norm`'s class and epsilon keeping the weights `index`, in that order."""
    with torch.device("meta"):
        new = type(norm)(len(index), eps=norm.variance_epsilon)
    weight = norm.weight.index_select(0, index.to(norm.weight.device))
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=norm.weight.requires_grad)
    return new


@register_adapter
class Olmo2Adapter(ArchitectureAdapter):
    """OLMo 2: norms on the branch outputs (`post_attention_layernorm`, `post_feedforward_layernorm`, each removed
    with its branch) and no norm on their inputs; q/k RMSNorms over the whole projection width (heads x head_dim),
    whose weights are sliced with the KV groups.

    The q/k norms average over the kept width, so slicing KV groups changes the kept heads' normalisation: unlike the
    other families, a pruned OLMo 2 attention is not the dense one with heads masked, it is the stock attention of
    the smaller width (what any runtime loading the checkpoint computes).
    """

    model_type = "olmo2"
    display_name = "OLMo 2"
    stem = "Olmo2"
    config_class = Olmo2Config
    causal_lm_class = Olmo2ForCausalLM
    layer_layout = DecoderLayerLayout(
        attention="self_attn",
        mlp="mlp",
        attention_norms=("post_attention_layernorm",),
        mlp_norms=("post_feedforward_layernorm",),
    )

    def select_kv_groups(self, attention: nn.Module, groups: torch.Tensor, layout: AttentionLayout) -> None:
        super().select_kv_groups(attention, groups, layout)
        attention.q_norm = select_norm(attention.q_norm, kv_group_rows(groups, layout.group_width))
        attention.k_norm = select_norm(attention.k_norm, kv_group_rows(groups, layout.head_dim))

    def gguf_blocker(self, config) -> Optional[str]:
        return "the deci graph has no norms on the branch outputs and no Q/K RMSNorms over the projection width"
