"""optimum-cli plugin of optimum-multipruner, read by optimum-cli at every start-up (keep it light; never fail).

`REGISTER_COMMANDS`, as optimum-intel registers its commands, and nothing patched:

* the `optimum-cli multipruner prune|recover|export|info|benchmark|evaluate` command group
  (`optimum.commands.multipruner`; its modules import the library only inside their `execute()`);
* `optimum-cli export openvino-pruned`, optimum-intel's `export openvino` for pruned checkpoints
  (`optimum.commands.multipruner.export_openvino`), under optimum's `export` command.

The configs the parsers are built from import without the registration `import optimum_multipruner` does (torch,
transformers: seconds), which is turned off here (`optimum_multipruner_constants.REGISTER_ON_IMPORT`) and left to
the commands that run. The one start-up that registers is the stock `optimum-cli export openvino` of a pruned
checkpoint (its `--model`'s config.json names a `multipruner_` type): `optimum_multipruner.register()` registers the
pruned model types with transformers and the hook that registers their export configs with optimum's `TasksManager`
when the OpenVINO exporter loads, so the stock command takes the checkpoint (public registration APIs; the command
itself is left as it is).
"""

import logging
import os
import sys
from typing import Optional

import optimum_multipruner_constants

logger = logging.getLogger("optimum_multipruner.cli")
_THIS_FILE = os.path.basename(__file__)


def _option_value(argv: list[str], flags: tuple[str, ...]) -> Optional[str]:
    """The value the last of `flags` gets in `argv` (`--flag value` or `--flag=value`), or None."""
    value = None
    for index, arg in enumerate(argv):
        name, equals, rest = arg.partition("=")
        if name in flags:
            value = rest if equals else (argv[index + 1] if index + 1 < len(argv) else None)
    return value


def _exports_a_pruned_checkpoint(argv: list[str]) -> bool:
    """Whether `argv` (optimum-cli's arguments) is `export openvino` of a pruned checkpoint; False when unreadable
    (the stock command reports its own errors)."""
    if argv[:2] != ["export", "openvino"]:
        return False
    model = _option_value(argv[2:], ("-m", "--model"))
    try:
        from optimum.commands.multipruner.export_openvino import is_pruned_checkpoint

        return model is not None and is_pruned_checkpoint(model, _option_value(argv[2:], ("--cache_dir",)))
    except Exception as error:
        logger.debug("optimum-multipruner: %s is not a readable pruned checkpoint (%s).", model, error)
        return False


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
# torchao, which transformers' modeling_utils imports, registers two enums in a way this torch deprecates: two
# warning lines whenever a command loads it, before the one line a command's error is
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
optimum_multipruner_constants.REGISTER_ON_IMPORT = False
if _exports_a_pruned_checkpoint(sys.argv[1:]):
    try:
        import optimum_multipruner

        optimum_multipruner.register()
    except Exception as error:  # a broken install: the stock command then refuses the model type
        logger.warning("optimum-multipruner: the pruned model types are not registered (%s).", error)
try:
    from optimum.commands.multipruner import MultiPrunerCommand

    REGISTER_COMMANDS.append(MultiPrunerCommand)
except Exception as error:
    logger.warning("optimum-multipruner: the `multipruner` commands are unavailable (%s).", error)
try:
    from optimum.commands.export.base import ExportCommand
    from optimum.commands.multipruner.export_openvino import PrunedOVExportCommand

    REGISTER_COMMANDS.append((PrunedOVExportCommand, ExportCommand))
except Exception as error:  # optimum-intel missing or changed: only this command is lost
    logger.debug("optimum-multipruner: `export openvino-pruned` is unavailable (%s).", error)
