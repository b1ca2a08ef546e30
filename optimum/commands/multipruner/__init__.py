"""`optimum-cli multipruner ...`: the command group and its sub-commands.

optimum-cli builds every parser at start-up, so these modules import at module level only the standard library,
`optimum.commands.base` and the import-free `optimum_multipruner_constants`; the library (torch, transformers,
OpenVINO) is imported inside each command's `execute()`. Shared helpers live in `common.py`.
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .benchmark import BenchmarkCommand
from .evaluate import EvaluateCommand
from .export import ExportCommand
from .info import InfoCommand
from .prune import PruneCommand
from .recover import RecoverCommand


class MultiPrunerCommand(BaseOptimumCLICommand):
    """The `multipruner` command group; add a sub-command by appending its `CommandInfo` to `SUBCOMMANDS`."""

    COMMAND = CommandInfo(
        name="multipruner",
        help="Training-free structured pruning (MultiPruner, BlockPruner). A mistake ends a command with one error "
        "line; MULTIPRUNER_DEBUG=1 shows the traceback.",
    )
    SUBCOMMANDS = (
        CommandInfo(name="prune", help=PruneCommand.HELP, subcommand_class=PruneCommand),
        CommandInfo(name="recover", help=RecoverCommand.HELP, subcommand_class=RecoverCommand),
        CommandInfo(name="export", help=ExportCommand.HELP, subcommand_class=ExportCommand),
        CommandInfo(name="info", help=InfoCommand.HELP, subcommand_class=InfoCommand),
        CommandInfo(name="benchmark", help=BenchmarkCommand.HELP, subcommand_class=BenchmarkCommand),
        CommandInfo(name="evaluate", help=EvaluateCommand.HELP, subcommand_class=EvaluateCommand),
    )


__all__ = ["BenchmarkCommand", "EvaluateCommand", "ExportCommand", "InfoCommand", "MultiPrunerCommand", "PruneCommand",
           "RecoverCommand"]
