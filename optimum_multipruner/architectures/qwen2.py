from typing import Optional

from transformers import Qwen2Config, Qwen2ForCausalLM

from .base import PRE_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class Qwen2Adapter(ArchitectureAdapter):
    """Qwen2 / Qwen2.5: the Llama layout with q/k/v biases (sliced with their rows)."""

    model_type = "qwen2"
    display_name = "Qwen2/2.5"
    stem = "Qwen2"
    config_class = Qwen2Config
    causal_lm_class = Qwen2ForCausalLM
    layer_layout = PRE_NORM_LAYER

    def gguf_blocker(self, config) -> Optional[str]:
        return "the deci graph takes a Q bias only as wide as the hidden size, so a pruned layer's Q bias does not fit"
