"""`optimum-cli multipruner info`: the per-layer structure of a pruned checkpoint or of its OpenVINO export."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any, Optional

from .common import MultiPrunerSubcommand, check_model_source


def load_pruned_config(model_name_or_path: str):
    """The pruned config class instance of a checkpoint dir, an OpenVINO export dir (base `model_type`) or a Hub id."""
    from transformers.utils import cached_file

    from optimum_multipruner.architectures import base_model_type
    from optimum_multipruner.modeling import PRUNED_CONFIG_CLASSES, register_pruned_models

    register_pruned_models()
    with open(cached_file(model_name_or_path, "config.json"), encoding="utf-8") as handle:
        values = json.load(handle)
    base_type = base_model_type(values.get("model_type", ""))
    if base_type not in PRUNED_CONFIG_CLASSES:
        raise ValueError(
            f"{model_name_or_path} has model type {values.get('model_type')!r}; supported families: "
            f"{', '.join(sorted(PRUNED_CONFIG_CLASSES))}."
        )
    values = {key: value for key, value in values.items() if key not in ("model_type", "architectures")}
    return PRUNED_CONFIG_CLASSES[base_type].from_dict(values)


def structure_summary(model_name_or_path: str) -> dict[str, Any]:
    """Per-layer kept heads / KV heads / MLP width / parameters, from the config alone (model built on `meta`)."""
    from optimum_multipruner.modeling import layer_summary

    return {"model": model_name_or_path, **layer_summary(load_pruned_config(model_name_or_path)),
            "recovery": recovery_summary(model_name_or_path)}


def recovery_summary(model_name_or_path: str) -> Optional[dict[str, Any]]:
    """What recovery after pruning did, from the folder's pruning record (None if it was not recovered)."""
    from optimum_multipruner.record import RECORD_NAME
    from optimum_multipruner.utils import read_json, source_file

    path = source_file(model_name_or_path, RECORD_NAME)
    recovery = read_json(path).get("recovery") if path else None
    if not recovery:
        return None
    config, curve = recovery["config"], recovery["loss_curve"]
    return {"method": config["method"], "teacher": recovery.get("teacher"), "dataset": config["dataset"],
            "tokens_seen": recovery["tokens_seen"], "data_sha256": recovery["data_sha256"],
            "final_loss": curve[-1]["loss"] if curve else None}


def format_structure_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table of `structure_summary` with totals."""
    dense = summary["dense"]
    lines = [
        f"{summary['model']} ({summary['model_type']}; dense: {dense['attention_heads']} heads, "
        f"{dense['kv_heads']} KV heads, MLP {dense['mlp_width']})",
        f"{'layer':>5}  {'attention':<9}  {'heads':>5}  {'KV heads':>8}  {'MLP width':>9}  {'parameters':>12}",
    ]
    for row in summary["layers"]:
        attention = "kept" if row["kv_heads"] else "removed"
        mlp = str(row["mlp_width"]) if row["mlp_width"] else "removed"
        lines.append(
            f"{row['layer']:>5}  {attention:<9}  {row['attention_heads']:>5}  {row['kv_heads']:>8}  {mlp:>9}  "
            f"{row['parameters']:>12,}"
        )
    removed = 1 - summary["parameters"] / summary["dense_parameters"]
    lines.append(
        f"total parameters: {summary['parameters']:,} of {summary['dense_parameters']:,} dense "
        f"({100 * removed:.2f}% removed); attention kept in "
        f"{sum(1 for row in summary['layers'] if row['kv_heads'])}/{len(summary['layers'])} layers, MLP kept in "
        f"{sum(1 for row in summary['layers'] if row['mlp_width'])}/{len(summary['layers'])}"
    )
    recovery = summary.get("recovery")
    if recovery:
        lines.append(
            f"recovered: {recovery['method']} distillation from {recovery['teacher']} on {recovery['tokens_seen']:,} "
            f"tokens of {recovery['dataset']} (data sha256 {recovery['data_sha256'][:12]}), final loss "
            f"{recovery['final_loss']}"
        )
    return "\n".join(lines)


class InfoCommand(MultiPrunerSubcommand):
    HELP = "Print the per-layer structure (attention heads, KV heads, MLP width, parameters) of a pruned model."

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("model", help="pruned checkpoint folder, its OpenVINO export folder, or a Hub id")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")

    def execute(self) -> None:
        check_model_source(self.args.model)
        summary = structure_summary(self.args.model)
        print(json.dumps(summary, indent=2) if self.args.json else format_structure_table(summary))
