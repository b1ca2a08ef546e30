from transformers import MistralConfig, MistralForCausalLM

from .base import PRE_NORM_LAYER, ArchitectureAdapter, register_adapter


@register_adapter
class MistralAdapter(ArchitectureAdapter):
    """Mistral: the Llama layout with a sliding attention window (uniform across layers)."""

    model_type = "mistral"
    display_name = "Mistral"
    stem = "Mistral"
    config_class = MistralConfig
    causal_lm_class = MistralForCausalLM
    layer_layout = PRE_NORM_LAYER
