from transformers import Qwen2Config, Qwen2ForCausalLM

from .base import ArchitectureAdapter


class Qwen2Adapter(ArchitectureAdapter):
    """Qwen2 / Qwen2.5: the Llama layout with q/k/v biases (sliced with their rows)."""

    model_type = "qwen2"
    stem = "Qwen2"
    config_class = Qwen2Config
    causal_lm_class = Qwen2ForCausalLM
