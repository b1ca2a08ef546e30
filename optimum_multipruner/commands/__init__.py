"""`optimum-cli multipruner ...` commands.

These modules import only `optimum.commands.base` at module level: optimum-cli builds every parser at start-up, so
the library itself (torch, transformers, OpenVINO) is imported inside each command's `run()`. The CLI hook
(`optimum/commands/register/register_multipruner.py`) can therefore load this package without importing
`optimum_multipruner` itself. Absolute imports of `optimum_multipruner.*` belong inside `run()` only.
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .benchmark import BenchmarkCommand
from .evaluate import EvaluateCommand
from .export import ExportCommand
from .info import InfoCommand
from .prune import PruneCommand


class MultiPrunerCommand(BaseOptimumCLICommand):
    """The `multipruner` command group; add a sub-command by appending its `CommandInfo` to `SUBCOMMANDS`."""

    COMMAND = CommandInfo(name="multipruner", help="Training-free structured pruning (MultiPruner, BlockPruner).")
    SUBCOMMANDS = (
        CommandInfo(name="prune", help=PruneCommand.HELP, subcommand_class=PruneCommand),
        CommandInfo(name="export", help=ExportCommand.HELP, subcommand_class=ExportCommand),
        CommandInfo(name="info", help=InfoCommand.HELP, subcommand_class=InfoCommand),
        CommandInfo(name="benchmark", help=BenchmarkCommand.HELP, subcommand_class=BenchmarkCommand),
        CommandInfo(name="evaluate", help=EvaluateCommand.HELP, subcommand_class=EvaluateCommand),
    )


__all__ = ["BenchmarkCommand", "ExportCommand", "InfoCommand", "MultiPrunerCommand", "PruneCommand"]
