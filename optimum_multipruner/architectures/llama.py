from transformers import LlamaConfig, LlamaForCausalLM

from .base import PRE_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class LlamaAdapter(ArchitectureAdapter):
    """Llama 2 and Llama 3.x: separate q/k/v/o and gate/up/down, optional biases."""

    model_type = "llama"
    display_name = "Llama 2/3.x"
    stem = "Llama"
    config_class = LlamaConfig
    causal_lm_class = LlamaForCausalLM
    layer_layout = PRE_NORM_LAYER
