"""optimum-cli plugin of optimum-multipruner (loaded by optimum-cli at every start-up).

* Adds the `optimum-cli multipruner prune|export|info|benchmark` command group.
* Wraps `optimum-cli export openvino` so that a pruned checkpoint (`model_type: multipruner_<family>`) exports with
  no `--task`: the export configs are registered only when such an export starts, the task defaults to
  `text-generation-with-past`, int8 is chosen when the *dense* model has >= 1e9 parameters, int4 adjusts group sizes
  that do not divide pruned widths, and the exported `config.json` gets the base model type.

Start-up must stay fast and must never fail: the command package is loaded without importing `optimum_multipruner`
(torch/transformers load inside `run()`), and any error here only disables the plugin.
"""

import functools
import importlib.util
import json
import logging
import os
import sys

logger = logging.getLogger("optimum_multipruner.cli")

PRUNED_MODEL_TYPE_PREFIX = "multipruner_"  # optimum_multipruner.architectures.PRUNED_MODEL_TYPE_PREFIX
_PRIVATE_COMMANDS_PACKAGE = "_optimum_multipruner_cli_commands"


def _load_commands_package():
    """`optimum_multipruner.commands`, loaded from its files when the (heavy) library is not imported yet."""
    if "optimum_multipruner" in sys.modules or _PRIVATE_COMMANDS_PACKAGE in sys.modules:
        return sys.modules.get(_PRIVATE_COMMANDS_PACKAGE) or importlib.import_module("optimum_multipruner.commands")
    library = importlib.util.find_spec("optimum_multipruner")  # locates the package without importing it
    directory = os.path.join(library.submodule_search_locations[0], "commands")
    spec = importlib.util.spec_from_file_location(
        _PRIVATE_COMMANDS_PACKAGE, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_COMMANDS_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PRIVATE_COMMANDS_PACKAGE]
        raise
    return module


def _model_type(model: str, cache_dir=None):
    """`model_type` of a local checkpoint dir or Hub id, or `None` when it cannot be read."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", cache_dir=cache_dir)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("model_type")


def _prepare_pruned_export(args) -> bool:
    """Register and adjust the arguments when `args.model` is a pruned checkpoint; return whether it is one."""
    if not str(_model_type(args.model, args.cache_dir) or "").startswith(PRUNED_MODEL_TYPE_PREFIX):
        return False
    from transformers import AutoConfig

    from optimum_multipruner.exporters.openvino import default_weight_format, register_openvino_export

    register_openvino_export()
    if args.task == "auto":
        args.task = "text-generation-with-past"
    if args.weight_format is None and args.quant_mode is None:
        args.weight_format = default_weight_format(AutoConfig.from_pretrained(args.model, cache_dir=args.cache_dir))
    if args.weight_format == "int4" and args.group_size_fallback is None:
        args.group_size_fallback = "adjust"
    return True


def _wrap_openvino_export(command_class) -> None:
    """Make `optimum-cli export openvino` handle pruned checkpoints; other models run the stock command unchanged."""
    original = command_class.run
    if getattr(original, "_multipruner_wrapped", False):
        return

    @functools.wraps(original)
    def run(self):
        try:
            pruned = _prepare_pruned_export(self.args)
        except Exception as error:  # the stock command still runs (and reports its own errors)
            logger.warning("optimum-multipruner could not prepare this export (%s); running the stock export.", error)
            pruned = False
        result = original(self)
        if pruned:
            try:
                from optimum_multipruner.exporters import rewrite_exported_config

                rewrite_exported_config(self.args.output)
            except Exception as error:  # the IR is fine; only loading it without this package needs the rewrite
                logger.warning("The exported config.json keeps its pruned model type (%s).", error)
        return result

    run._multipruner_wrapped = True
    command_class.run = run


class _CommandsGivenOnce(list):
    """optimum-cli reads `REGISTER_COMMANDS` once per directory holding this file, and a source checkout on `sys.path`
    next to an installed copy holds two: skip the commands when the loader's list already has them (argparse would
    reject the duplicate). Without that list in sight (another optimum version), behave as a plain list."""

    def __iter__(self):
        collected = sys._getframe(1).f_locals.get("commands_to_register")
        if isinstance(collected, list) and any(entry[0] in self for entry in collected if isinstance(entry, tuple)):
            return iter(())
        return super().__iter__()


REGISTER_COMMANDS = _CommandsGivenOnce()
try:
    from optimum.commands.export.openvino import OVExportCommand

    _wrap_openvino_export(OVExportCommand)
except Exception as error:  # optimum-intel missing or changed: only the wrapper is lost
    logger.debug("optimum-multipruner: `export openvino` not wrapped (%s).", error)
try:
    REGISTER_COMMANDS.append(_load_commands_package().MultiPrunerCommand)
except Exception as error:
    logger.warning("optimum-multipruner: the `multipruner` commands are unavailable (%s).", error)
