from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from .base import register_adapter
from .gemma2 import Gemma2Adapter


@register_adapter
class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3 text (`gemma3_text`): Gemma 2's layer without soft-capping by default, per-head q/k RMSNorms over
    `head_dim` shared by all heads (left untouched), and a RoPE base per layer kind (local for sliding-window layers,
    global for full ones), which each layer keeps after pruning."""

    model_type = "gemma3_text"
    display_name = "Gemma 3 (text)"
    stem = "Gemma3"
    config_class = Gemma3TextConfig
    causal_lm_class = Gemma3ForCausalLM
