from transformers import MistralConfig, MistralForCausalLM

from .base import ArchitectureAdapter


class MistralAdapter(ArchitectureAdapter):
    """Mistral: the Llama layout with a sliding attention window (uniform across layers)."""

    model_type = "mistral"
    stem = "Mistral"
    config_class = MistralConfig
    causal_lm_class = MistralForCausalLM
