"""The pruning record: every step of a search, the final structure, and readers for the official JSON formats."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

from .architectures import ArchitectureAdapter, get_adapter
from .structure import PrunedStructure
from .utils import atomic_write_text, read_json

RECORD_NAME = "pruning_record.json"
RECORD_FORMAT = "optimum-multipruner-record"


@dataclass
class PruningStep:
    """One greedy step: what was removed, and the model right after it."""

    step: int
    stage: str  # "block" | "mlp" | "attention"
    action: str  # "remove_attention" | "remove_mlp" | "shrink_mlp" | "shrink_attention"
    layer: int
    perplexity: Optional[float]  # calibration perplexity after the step (None in imported records)
    ratio: Optional[float]  # share of all dense parameters removed so far (None in imported records)
    num_parameters: Optional[int]  # parameters left (None in imported records)
    kept: int  # after the step: KV heads (attention actions) or MLP width (MLP actions); 0 = removed


@dataclass
class PruningRecord:
    """Everything needed to reproduce a pruned model from its dense original."""

    model_type: str
    num_hidden_layers: int
    dense_parameters: int
    structure: PrunedStructure
    weight_reorder: bool
    steps: list[PruningStep] = field(default_factory=list)
    config: Optional[dict[str, Any]] = None  # the MultiPrunerConfig of the search
    start_perplexity: dict[str, float] = field(default_factory=dict)  # per calibration set, when first used
    search_stats: dict[str, Any] = field(default_factory=dict)
    source: str = "optimum-multipruner"
    target_reached: bool = True

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "version": 1,
            "source": self.source,
            "model_type": self.model_type,
            "num_hidden_layers": self.num_hidden_layers,
            "dense_parameters": self.dense_parameters,
            "weight_reorder": self.weight_reorder,
            "config": self.config,
            "start_perplexity": self.start_perplexity,
            "target_reached": self.target_reached,
            "steps": [asdict(step) for step in self.steps],
            "structure": self.structure.to_dict(),
            "search_stats": self.search_stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningRecord":
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise ValueError(
                "Not an optimum-multipruner pruning record (no `format` field). For the official MultiPruner "
                "`pruning_config.json` or a BlockPruner result JSON use `PruningRecord.load(path)`, which detects them."
            )
        try:
            return cls(
                model_type=data["model_type"],
                num_hidden_layers=data["num_hidden_layers"],
                dense_parameters=data["dense_parameters"],
                structure=PrunedStructure.from_dict(data["structure"]),
                weight_reorder=bool(data["weight_reorder"]),
                steps=[PruningStep(**step) for step in data["steps"]],
                config=data.get("config"),
                start_perplexity=data.get("start_perplexity", {}),
                search_stats=data.get("search_stats", {}),
                source=data.get("source", "optimum-multipruner"),
                target_reached=data.get("target_reached", True),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"Corrupted pruning record: {error!r}.") from error

    def save(self, path: Union[str, os.PathLike]) -> str:
        """Write the record as JSON (atomically). A directory gets `pruning_record.json` inside it."""
        if os.path.isdir(path):
            path = os.path.join(path, RECORD_NAME)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return str(path)

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike],
        model_config=None,
        weight_reorder: bool = True,
        num_blocks: Optional[int] = None,
    ) -> "PruningRecord":
        """Read our record, an official MultiPruner `pruning_config.json`, or an official BlockPruner result JSON.

        The official formats do not say which model they belong to, so they need the dense `model_config`.
        `weight_reorder` (MultiPruner format only) must match the flag the official search ran with (the released
        commands use it for every model but Baichuan2-13B). `num_blocks` picks a BlockPruner entry (default: largest).
        """
        if os.path.isdir(path):
            path = os.path.join(path, RECORD_NAME)
        data = read_json(path)
        if isinstance(data, dict) and data.get("format") == RECORD_FORMAT:
            return cls.from_dict(data)
        if model_config is None:
            raise ValueError(f"{path} is in an official format; pass the dense model's config to read it.")
        if isinstance(data, dict) and "pruned_attn_idx" in data:
            return from_multipruner_config(data, model_config, weight_reorder)
        if isinstance(data, dict) and data and all(str(k).isdigit() for k in data):
            return from_blockpruner_result(data, model_config, num_blocks)
        raise ValueError(f"{path} is neither a pruning record, a MultiPruner pruning_config.json nor a BlockPruner JSON.")


def _imported_record(structure: PrunedStructure, adapter: ArchitectureAdapter, config, weight_reorder: bool,
                     source: str, steps: list[PruningStep]) -> PruningRecord:
    from .surgery import dense_parameter_count

    structure.validate(config, adapter)
    return PruningRecord(
        model_type=adapter.model_type,
        num_hidden_layers=config.num_hidden_layers,
        dense_parameters=dense_parameter_count(config, adapter),
        structure=structure,
        weight_reorder=weight_reorder,
        steps=steps,
        source=source,
    )


def from_multipruner_config(data: dict[str, Any], config, weight_reorder: bool = True) -> PruningRecord:
    """Official MultiPruner `pruning_config.json`: removed block indices (in removal order) and kept widths per layer
    (`pruned_attn_width` in query channels, `pruned_mlp_width` in intermediate channels)."""
    adapter = get_adapter(config)
    layout = adapter.attention_layout(config)
    structure = PrunedStructure.dense(config, adapter)
    try:
        for key, values in (("pruned_attn_width", structure.num_key_value_heads), ("pruned_mlp_width", None)):
            for layer, width in data.get(key, {}).items():
                i = int(layer)
                if not 0 <= i < config.num_hidden_layers:
                    raise ValueError(f"`{key}` names layer {i}, but the model has {config.num_hidden_layers} layers.")
                if values is None:
                    structure.intermediate_size[i] = int(width)
                elif int(width) % layout.group_width:
                    raise ValueError(f"Layer {i}: {width} query channels is not a whole number of KV groups.")
                else:
                    values[i] = int(width) // layout.group_width
        for i in data.get("pruned_attn_idx", []):
            structure.num_key_value_heads[int(i)] = 0
        for i in data.get("pruned_mlp_idx", []):
            structure.intermediate_size[int(i)] = 0
    except (TypeError, IndexError) as error:
        raise ValueError(f"Malformed MultiPruner pruning_config.json: {error!r}.") from error
    structure.num_attention_heads = [kv * layout.heads_per_group for kv in structure.num_key_value_heads]
    return _imported_record(structure, adapter, config, weight_reorder, "multipruner-official", [])


def from_blockpruner_result(data: dict[str, Any], config, num_blocks: Optional[int] = None) -> PruningRecord:
    """Official BlockPruner result: `{"K": [[kind, layer], ...]}` with kind `mha` or `mlp`, nested sets sorted by layer;
    the removal order is recovered by diffing consecutive entries."""
    adapter = get_adapter(config)
    counts = sorted(int(k) for k in data)
    num_blocks = counts[-1] if num_blocks is None else num_blocks
    if num_blocks not in counts:
        raise ValueError(f"The BlockPruner file has entries for {counts} blocks, not {num_blocks}.")
    actions = {"mha": "remove_attention", "mlp": "remove_mlp"}
    steps, previous = [], set()
    for k in range(1, num_blocks + 1):
        current = {(kind, int(layer)) for kind, layer in data.get(str(k), [])}
        new = current - previous
        if len(new) != 1 or not previous <= current or any(kind not in actions for kind, _ in new):
            raise ValueError(f"BlockPruner entry {k} is not entry {k - 1} plus one block.")
        kind, layer = new.pop()
        steps.append(PruningStep(k, "block", actions[kind], layer, None, None, None, 0))
        previous = current
    structure = PrunedStructure.dense(config, adapter)
    for step in steps:
        if not 0 <= step.layer < config.num_hidden_layers:
            raise ValueError(f"BlockPruner names layer {step.layer}, but the model has {config.num_hidden_layers}.")
        target = structure.num_key_value_heads if step.action == "remove_attention" else structure.intermediate_size
        target[step.layer] = 0
    structure.num_attention_heads = [kv * adapter.attention_layout(config).heads_per_group
                                     for kv in structure.num_key_value_heads]
    return _imported_record(structure, adapter, config, False, "blockpruner-official", steps)
