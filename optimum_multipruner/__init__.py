"""optimum-multipruner: training-free structured pruning (MultiPruner, BlockPruner) for Hugging Face LLMs.

The package imports lazily (module `__getattr__`, as `recovery/` does): `import optimum_multipruner` and its
configuration modules load no torch, so `optimum-cli` builds its options from the configs at start-up for free. The
first name taken from the package loads the library and registers the pruned model types (`multipruner_llama`, ...)
with transformers' Auto classes; `register_pruned_models()` does it explicitly, before
`AutoModelForCausalLM.from_pretrained(pruned_dir)` in a process that has used nothing else of the package.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

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
    importlib.import_module(".modeling", __name__).register_pruned_models()  # once the library is in use
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
    "register_pruned_models",
    "__version__",
]
