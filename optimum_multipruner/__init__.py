"""optimum-multipruner: training-free structured pruning (MultiPruner, BlockPruner) for Hugging Face LLMs.

Importing the package registers the pruned model types (`multipruner_llama`, ...) with transformers' Auto classes,
so `AutoModelForCausalLM.from_pretrained(pruned_dir)` works, and installs the import hook that registers their
OpenVINO export configs once optimum-intel's exporter is imported (`OVModelForCausalLM.from_pretrained(pruned_dir,
export=True)`; see `exporters.enable_lazy_openvino_registration`). The public names import on first use (module
`__getattr__`, as `recovery/` does). A process that turned `optimum_multipruner_constants.REGISTER_ON_IMPORT` off
first (the optimum-cli plugin, whose parsers only read the configs) calls `register()` itself.
"""

from __future__ import annotations

import importlib
from typing import Any

import optimum_multipruner_constants

from .version import __version__


def register() -> None:
    """What `import optimum_multipruner` does (idempotent): register the pruned model types with transformers' Auto
    classes, and install the hook that registers their OpenVINO export configs when optimum's OpenVINO exporter is
    imported."""
    from .exporters import enable_lazy_openvino_registration
    from .modeling import register_pruned_models

    register_pruned_models()
    enable_lazy_openvino_registration()


if optimum_multipruner_constants.REGISTER_ON_IMPORT:
    register()

# public name -> the module (relative to this package) that defines it
_LAZY_NAMES = {
    "ADAPTERS": ".architectures",
    "get_adapter": ".architectures",
    "CompensationConfig": ".configuration",
    "FastSearchConfig": ".configuration",
    "MultiPrunerConfig": ".configuration",
    "enable_lazy_openvino_registration": ".exporters",
    "export_gguf": ".exporters",
    "export_openvino": ".exporters",
    "register_pruned_models": ".modeling",
    "MultiPruner": ".pruner",
    "PruningRecord": ".record",
    "PruningStep": ".record",
    "RecoveryConfig": ".recovery",
    "PrunedStructure": ".structure",
    "count_parameters": ".surgery",
}


def __getattr__(name: str) -> Any:
    if name == "SUPPORTED_MODEL_TYPES":
        return tuple(sorted(__getattr__("ADAPTERS")))
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value  # later look-ups skip `__getattr__`
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CompensationConfig",
    "FastSearchConfig",
    "MultiPruner",
    "MultiPrunerConfig",
    "PrunedStructure",
    "PruningRecord",
    "PruningStep",
    "RecoveryConfig",
    "SUPPORTED_MODEL_TYPES",
    "count_parameters",
    "enable_lazy_openvino_registration",
    "export_gguf",
    "export_openvino",
    "get_adapter",
    "register",
    "register_pruned_models",
    "__version__",
]
