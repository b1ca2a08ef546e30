from transformers import Qwen3Config, Qwen3ForCausalLM

from .base import ArchitectureAdapter


class Qwen3Adapter(ArchitectureAdapter):
    """Qwen3: the Llama layout with per-head q/k RMSNorms over `head_dim`, shared by all heads (left untouched)."""

    model_type = "qwen3"
    stem = "Qwen3"
    config_class = Qwen3Config
    causal_lm_class = Qwen3ForCausalLM
