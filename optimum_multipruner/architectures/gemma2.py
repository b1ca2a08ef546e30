from typing import Optional

import torch
from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM

from .base import SANDWICH_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class Gemma2Adapter(ArchitectureAdapter):
    """Gemma 2: sandwich norms (a removed branch takes both of its norms), alternating sliding-window and full
    attention (`config.layer_types`), and the final logits soft-capped, also when the scorer computes them.

    The embedding scale, `query_pre_attn_scalar` and the attention-logit soft-capping are global and stay as they are.
    """

    model_type = "gemma2"
    display_name = "Gemma 2"
    stem = "Gemma2"
    config_class = Gemma2Config
    causal_lm_class = Gemma2ForCausalLM
    layer_layout = SANDWICH_NORM_LAYER
    # optimum-intel 2.2 caps its Gemma export configs at transformers 5.0; the pruned IRs of Gemma 2 and 3 match
    # PyTorch on 5.5 (tests/exporters: prefill and cached decode logits, optimum-intel and openvino-genai tokens)
    openvino_max_transformers_version = "5.5.99"

    def head_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().head_logits(model, hidden)
        cap = model.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def gguf_blocker(self, config) -> Optional[str]:
        return ("the deci graph has no norms on the branch outputs (Gemma's sandwich norms), no embedding scaling and "
                "no per-layer sliding window")
