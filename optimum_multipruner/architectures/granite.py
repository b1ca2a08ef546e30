from typing import Optional

import torch
from torch import nn
from transformers import GraniteConfig, GraniteForCausalLM

from .base import PRE_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class GraniteAdapter(ArchitectureAdapter):
    """IBM Granite (3.x): the Llama layout with four multipliers, which pruning leaves as they are.

    `embedding_multiplier` scales the embeddings, `attention_multiplier` is the attention's softmax scale,
    `residual_multiplier` scales each branch output before the residual add (a removed branch adds `0 * m = 0`), and
    the logits are divided by `logits_scaling`, also when the scorer computes them from cached hidden states.
    """

    model_type = "granite"
    display_name = "Granite"
    stem = "Granite"
    config_class = GraniteConfig
    causal_lm_class = GraniteForCausalLM
    layer_layout = PRE_NORM_LAYER

    def head_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return super().head_logits(model, hidden) / model.config.logits_scaling

    def gguf_blocker(self, config) -> Optional[str]:
        return "the deci graph has none of Granite's embedding, attention, residual and logit multipliers"
