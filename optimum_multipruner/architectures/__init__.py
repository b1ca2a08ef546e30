"""One adapter per supported decoder family; `get_adapter` picks it from a model, a config or a `model_type`.

Adding a family is one module in this package: an `ArchitectureAdapter` subclass decorated with `@register_adapter`
(see `granite.py`). Importing the package imports every module in it, so each family registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from optimum_multipruner_constants import PRUNED_MODEL_TYPE_PREFIX

from .base import (
    ADAPTERS,
    PRE_NORM_LAYER,
    SANDWICH_NORM_LAYER,
    ArchitectureAdapter,
    AttentionLayout,
    DecoderLayerLayout,
    register_adapter,
)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module


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
        names = ", ".join(ADAPTERS[name].display_name for name in sorted(ADAPTERS))
        raise ValueError(
            f"Unsupported architecture {model_type or type(model_or_config).__name__!r}: MultiPruner supports the "
            f"families {', '.join(sorted(ADAPTERS))} ({names})."
        )
    return ADAPTERS[model_type]


__all__ = [
    "ADAPTERS",
    "PRE_NORM_LAYER",
    "SANDWICH_NORM_LAYER",
    "ArchitectureAdapter",
    "AttentionLayout",
    "DecoderLayerLayout",
    "base_model_type",
    "get_adapter",
    "register_adapter",
]
