"""Export of pruned checkpoints; the OpenVINO machinery is imported only when an export needs it.

* `export_openvino(model_or_dir, output_dir, weight_format=None, overwrite=False)`: script entry point.
* `register_openvino_export()`: register the `multipruner_<family>` export configs with optimum's `TasksManager`.
* `enable_lazy_openvino_registration()`: register as soon as anything imports `optimum.exporters.openvino`
  (e.g. `OVModelForCausalLM.from_pretrained(pruned_dir, export=True)`), at no import cost before that.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
from typing import Any, Optional, Union

from ..architectures import ADAPTERS, PRUNED_MODEL_TYPE_PREFIX
from ..utils import atomic_write_text, get_logger

logger = get_logger(__name__)

TASKS = ("text-generation", "text-generation-with-past")
WEIGHT_FORMATS = (None, "fp32", "fp16", "int8", "int4")
OPENVINO_EXPORTERS_MODULE = "optimum.exporters.openvino"


def register_openvino_export() -> None:
    """Register the OpenVINO export config of every `multipruner_<family>` type with `TasksManager` (idempotent)."""
    from .openvino import register_openvino_export as register

    register()


def export_openvino(model_or_dir, output_dir: Union[str, os.PathLike], weight_format: Optional[str] = None,
                    overwrite: bool = False, **kwargs: Any) -> str:
    """Export a pruned model to an OpenVINO IR directory (see `exporters.openvino.export_openvino`)."""
    from .openvino import export_openvino as export

    return export(model_or_dir, output_dir, weight_format=weight_format, overwrite=overwrite, **kwargs)


def rewrite_exported_config(output_dir: Union[str, os.PathLike]) -> bool:
    """Give an exported IR directory's `config.json` the base `model_type` and `architectures`; keep `pruning`.

    The stateful IR describes its own per-layer shapes, so optimum-intel needs only the family: a process that never
    imports this package then loads the directory with `OVModelForCausalLM.from_pretrained`. Returns whether the file
    was changed (`False` for a dense export).
    """
    path = os.path.join(output_dir, "config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    model_type = config.get("model_type", "")
    base_type = model_type.removeprefix(PRUNED_MODEL_TYPE_PREFIX)
    if model_type == base_type or base_type not in ADAPTERS:
        return False
    config["model_type"] = base_type
    config["architectures"] = [ADAPTERS[base_type].causal_lm_class.__name__]
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


# --------------------------------------------------------------------------- lazy registration
class _RegisterAfterExec(importlib.abc.Loader):
    """Runs the real loader of `optimum.exporters.openvino`, then registers our export configs."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register_quietly()


class _OpenVINOExportersHook(importlib.abc.MetaPathFinder):
    """One-shot import hook: wraps the loader of `optimum.exporters.openvino` and then removes itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname != OPENVINO_EXPORTERS_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def _register_quietly() -> None:
    ours = sys.modules.get(f"{__name__}.openvino")
    if ours is not None and not hasattr(ours, "register_openvino_export"):
        return  # our exporter module is still importing optimum's; `export_openvino` registers when it runs
    try:
        register_openvino_export()
    except Exception as error:  # never break optimum-intel for other models
        logger.warning("Could not register the MultiPruner OpenVINO export configs: %s", error)


def enable_lazy_openvino_registration() -> None:
    """Register the export configs when `optimum.exporters.openvino` is imported (now, if it already is)."""
    if OPENVINO_EXPORTERS_MODULE in sys.modules:
        _register_quietly()
    elif not any(isinstance(finder, _OpenVINOExportersHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OpenVINOExportersHook())


__all__ = [
    "TASKS",
    "WEIGHT_FORMATS",
    "enable_lazy_openvino_registration",
    "export_openvino",
    "register_openvino_export",
    "rewrite_exported_config",
]
