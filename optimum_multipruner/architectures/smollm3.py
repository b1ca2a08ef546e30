from typing import Optional

from transformers import SmolLM3Config, SmolLM3ForCausalLM

from .base import PRE_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class SmolLM3Adapter(ArchitectureAdapter):
    """SmolLM3: the Llama layout with GQA; every `no_rope_layer_interval`-th layer has no rotary embedding
    (`config.no_rope_layers`). Each attention reads its kind from its own layer index when it is built, so a kept
    attention keeps RoPE or NoPE, also in a reloaded checkpoint."""

    model_type = "smollm3"
    display_name = "SmolLM3"
    stem = "SmolLM3"
    config_class = SmolLM3Config
    causal_lm_class = SmolLM3ForCausalLM
    layer_layout = PRE_NORM_LAYER

    def gguf_blocker(self, config) -> Optional[str]:
        return "the deci graph applies RoPE in every layer and has no NoPE layers"
