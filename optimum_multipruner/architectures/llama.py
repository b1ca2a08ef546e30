from transformers import LlamaConfig, LlamaForCausalLM

from .base import ArchitectureAdapter


class LlamaAdapter(ArchitectureAdapter):
    """Llama 2 and Llama 3.x: separate q/k/v/o and gate/up/down, optional biases."""

    model_type = "llama"
    stem = "Llama"
    config_class = LlamaConfig
    causal_lm_class = LlamaForCausalLM
