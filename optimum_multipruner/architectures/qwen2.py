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
