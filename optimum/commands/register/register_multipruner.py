"""optimum-cli plugin of optimum-multipruner, read by optimum-cli at every start-up (keep it light; never fail).

* `REGISTER_COMMANDS`: the `optimum-cli multipruner prune|recover|export|info|benchmark|evaluate` command group
  (`optimum.commands.multipruner`; its modules import the library only inside their `execute()`).
* The `optimum-cli export openvino` hook: its `run` is wrapped so that a pruned checkpoint
  (`model_type: multipruner_<family>`, read from config.json) exports with no `--task`; what that takes lives in
  `optimum_multipruner.exporters.openvino_command.run_openvino_export_command`, imported only for such an export.
  Other models run the stock command unchanged.
"""

import functools
import json
import logging
import os

logger = logging.getLogger("optimum_multipruner.cli")
_THIS_FILE = os.path.basename(__file__)


def _is_pruned_checkpoint(model: str, cache_dir=None) -> bool:
    """Whether the config.json of a local folder or Hub id names a pruned model type."""
    from optimum_multipruner_constants import PRUNED_MODEL_TYPE_PREFIX

    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", cache_dir=cache_dir)
    with open(path, encoding="utf-8") as handle:
        return str(json.load(handle).get("model_type", "")).startswith(PRUNED_MODEL_TYPE_PREFIX)


def _with_pruned_checkpoints(run):
    """`OVExportCommand.run`, sending pruned checkpoints through `run_openvino_export_command`."""

    @functools.wraps(run)
    def wrapped(self):
        try:
            pruned = _is_pruned_checkpoint(self.args.model, self.args.cache_dir)
        except Exception as error:  # unreadable or unreachable: the stock command reports its own errors
            logger.debug("optimum-multipruner: %s is not a readable pruned checkpoint (%s).", self.args.model, error)
            pruned = False
        if not pruned:
            return run(self)
        from optimum_multipruner.exporters.openvino_command import run_openvino_export_command

        return run_openvino_export_command(run, self)

    wrapped.multipruner_wrapped = True
    return wrapped


class _GivenOncePerStart(list):
    """optimum-cli reads `REGISTER_COMMANDS` once per directory of `optimum.commands.register` holding this file, and a
    source checkout on `sys.path` next to an installed copy makes two (both read this one module): argparse would
    reject the second `multipruner`. So the commands are given on the first of those reads only."""

    def __init__(self, commands) -> None:
        super().__init__(commands)
        self._reads_left = 0  # reads still to come in the current start-up

    def __iter__(self):
        if self._reads_left:
            self._reads_left -= 1
            return iter(())
        self._reads_left = _copies_read() - 1
        return super().__iter__()


def _copies_read() -> int:
    """Directories optimum-cli reads this file from: the distinct `optimum.commands.register` paths holding it."""
    import importlib.util

    spec = importlib.util.find_spec("optimum.commands.register")
    paths = set(spec.submodule_search_locations or ()) if spec is not None else set()
    return max(1, sum(os.path.isfile(os.path.join(path, _THIS_FILE)) for path in paths))


REGISTER_COMMANDS = _GivenOncePerStart(())
try:
    from optimum.commands.export.openvino import OVExportCommand

    if not getattr(OVExportCommand.run, "multipruner_wrapped", False):
        OVExportCommand.run = _with_pruned_checkpoints(OVExportCommand.run)
except Exception as error:  # optimum-intel missing or changed: only the hook is lost
    logger.debug("optimum-multipruner: `export openvino` not wrapped (%s).", error)
try:
    from optimum.commands.multipruner import MultiPrunerCommand

    REGISTER_COMMANDS.append(MultiPrunerCommand)
except Exception as error:
    logger.warning("optimum-multipruner: the `multipruner` commands are unavailable (%s).", error)
