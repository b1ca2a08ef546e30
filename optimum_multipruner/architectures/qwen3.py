from typing import Optional

from transformers import Qwen3Config, Qwen3ForCausalLM

from .base import PRE_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class Qwen3Adapter(ArchitectureAdapter):
    """Qwen3: the Llama layout with per-head q/k RMSNorms over `head_dim`, shared by all heads (left untouched)."""

    model_type = "qwen3"
    display_name = "Qwen3"
    stem = "Qwen3"
    config_class = Qwen3Config
    causal_lm_class = Qwen3ForCausalLM
    layer_layout = PRE_NORM_LAYER

    def gguf_blocker(self, config) -> Optional[str]:
        return "the deci graph has no per-head Q/K RMSNorms"
