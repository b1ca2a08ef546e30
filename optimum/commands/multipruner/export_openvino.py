"""`optimum-cli export openvino-pruned`: optimum-intel's `export openvino`, with all its options, for a pruned
checkpoint (`model_type: multipruner_<family>`), registered beside it under `optimum-cli export` the way optimum-intel
registers its own command (`REGISTER_COMMANDS`), without touching the stock command.

Light at import (optimum-cli builds every parser at start-up): what the export takes lives in
`optimum_multipruner.exporters.openvino_command`, imported when the command runs.
"""

from __future__ import annotations

import json
import os

from optimum.commands.base import CommandInfo
from optimum.commands.export.openvino import OVExportCommand

from optimum_multipruner_constants import PRUNED_MODEL_TYPE_PREFIX

from .common import MultiPrunerSubcommand


def is_pruned_checkpoint(model: str, cache_dir=None) -> bool:
    """Whether the config.json of a local folder or Hub id names a pruned model type."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", cache_dir=cache_dir)
    with open(path, encoding="utf-8") as handle:
        return str(json.load(handle).get("model_type", "")).startswith(PRUNED_MODEL_TYPE_PREFIX)


class PrunedOVExportCommand(MultiPrunerSubcommand, OVExportCommand):
    """`export openvino` of a pruned checkpoint: no `--task` needed, the weight format chosen from the dense size,
    int4 group sizes adjusted to pruned widths, and the IR folder given the base model type and the pruning record."""

    GROUP = "export"
    COMMAND = CommandInfo(
        name="openvino-pruned",
        help="Export a pruned checkpoint (optimum-multipruner) to OpenVINO IR; the options of `export openvino`.",
    )

    def execute(self) -> None:
        if not is_pruned_checkpoint(self.args.model, self.args.cache_dir):
            raise ValueError(f"{self.args.model} is not a pruned checkpoint (its model_type does not start with "
                             f"{PRUNED_MODEL_TYPE_PREFIX}); export it with `optimum-cli export openvino`.")
        from optimum_multipruner.exporters.openvino_command import run_openvino_export_command

        run_openvino_export_command(OVExportCommand.run, self)
