"""One adapter per supported decoder family; `get_adapter` picks it from a model or config."""

from __future__ import annotations

from .base import ArchitectureAdapter, AttentionLayout
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter
from .qwen3 import Qwen3Adapter

ADAPTERS: dict[str, ArchitectureAdapter] = {
    adapter.model_type: adapter() for adapter in (LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter, Phi3Adapter)
}
PRUNED_MODEL_TYPE_PREFIX = "multipruner_"


def base_model_type(model_type: str) -> str:
    """`multipruner_llama` -> `llama`; other types unchanged."""
    return model_type.removeprefix(PRUNED_MODEL_TYPE_PREFIX)


def get_adapter(model_or_config) -> ArchitectureAdapter:
    """The adapter of a model, a config or a `model_type` string; `ValueError` naming the supported families for
    anything else."""
    if isinstance(model_or_config, str):
        model_type = base_model_type(model_or_config)
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = base_model_type(getattr(config, "model_type", "") or "")
    if model_type not in ADAPTERS:
        raise ValueError(
            f"Unsupported architecture {model_type or type(model_or_config).__name__!r}: MultiPruner supports the "
            f"families {', '.join(sorted(ADAPTERS))} (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, Phi-3)."
        )
    return ADAPTERS[model_type]


__all__ = ["ADAPTERS", "ArchitectureAdapter", "AttentionLayout", "base_model_type", "get_adapter"]
