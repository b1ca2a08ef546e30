"""Export of pruned checkpoints; the OpenVINO and GGUF machinery is imported only when an export needs it.

* `export_openvino(model_or_dir, output_dir, weight_format=None, overwrite=False)`: script entry point.
* `export_gguf(model_or_dir, output_file, outtype="f16", overwrite=False)`: one GGUF file for llama.cpp.
* `register_openvino_export()`: register the `multipruner_<family>` export configs with optimum's `TasksManager`.
* `enable_lazy_openvino_registration()`: installed by `import optimum_multipruner`: a `sys.meta_path` hook that
  registers as soon as anything imports `optimum.exporters.openvino` (e.g. `OVModelForCausalLM.from_pretrained(
  pruned_dir, export=True)` or the stock `optimum-cli export openvino`), at no import cost before that.
* `finish_export(output_dir, ...)`: the base model type in the IR's `config.json`, the pruning record and the model
  card next to it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Optional, Union

from optimum_multipruner_constants import PRUNED_MODEL_TYPE_PREFIX, WEIGHT_FORMATS

from ..architectures import ADAPTERS
from ..compat import OPENVINO_EXPORTERS_MODULE
from ..utils import atomic_write_text, call_after_import, get_logger, source_file

logger = get_logger(__name__)

TASKS = ("text-generation", "text-generation-with-past")


def register_openvino_export() -> None:
    """Register the OpenVINO export config of every `multipruner_<family>` type with `TasksManager` (idempotent)."""
    from .openvino import register_openvino_export as register

    register()


def export_openvino(model_or_dir, output_dir: Union[str, os.PathLike], weight_format: Optional[str] = None,
                    overwrite: bool = False, **kwargs: Any) -> str:
    """Export a pruned model to an OpenVINO IR directory (see `exporters.openvino.export_openvino`)."""
    from .openvino import export_openvino as export

    return export(model_or_dir, output_dir, weight_format=weight_format, overwrite=overwrite, **kwargs)


def export_gguf(model_or_dir, output_file: Union[str, os.PathLike], outtype: str = "f16", overwrite: bool = False,
                **kwargs: Any) -> str:
    """Export a pruned (or dense) model to a GGUF file for llama.cpp (see `exporters.gguf.export_gguf`)."""
    from .gguf import export_gguf as export

    return export(model_or_dir, output_file, outtype=outtype, overwrite=overwrite, **kwargs)


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


def finish_export(output_dir: Union[str, os.PathLike], source: Any = None, record: Any = None,
                  cache_dir: Optional[str] = None) -> None:
    """Make an exported IR folder self-describing: the base model type in `config.json` (see
    [`rewrite_exported_config`]), the pruning record as `pruning_record.json` and the model card as `README.md`.

    With `record` (a `PruningRecord`, e.g. applied by `export --record`) both are written from it; otherwise the
    record and card of `source` (a checkpoint folder or Hub id) are copied when it has them.
    """
    from transformers import AutoConfig

    from ..model_card import MODEL_CARD_NAME, write_model_card
    from ..record import RECORD_NAME

    rewrite_exported_config(output_dir)
    if record is not None:
        record.save(os.path.join(output_dir, RECORD_NAME))
        write_model_card(output_dir, AutoConfig.from_pretrained(output_dir), record)
        return
    for name in (RECORD_NAME, MODEL_CARD_NAME) if source is not None else ():
        path = source_file(str(source), name, cache_dir)
        if path is not None:
            shutil.copyfile(path, os.path.join(output_dir, name))


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
    call_after_import(OPENVINO_EXPORTERS_MODULE, _register_quietly)


__all__ = [
    "TASKS",
    "WEIGHT_FORMATS",
    "enable_lazy_openvino_registration",
    "export_gguf",
    "export_openvino",
    "finish_export",
    "register_openvino_export",
    "rewrite_exported_config",
]
