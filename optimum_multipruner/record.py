"""The pruning record: every step of a search, the final structure, the weight order it pruned along, and readers for
the official JSON formats."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from .architectures import ArchitectureAdapter, get_adapter
from .configuration import BLOCK_STAGE, MultiPrunerConfig
from .structure import PrunedStructure
from .surgery import LayerOrder, dense_parameter_count
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
    # Fast mode with `fast_search.screen`: the damage of each candidate the step scored (`str(candidate)` -> its mean
    # calibration-loss increase per sequence, on the prefix of the last round it was kept through); a resumed search
    # screens by it. Written only when set.
    candidate_damage: Optional[dict[str, float]] = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.candidate_damage is None:
            del data["candidate_damage"]
        return data


@dataclass
class PruningRecord:
    """Everything needed to reproduce a pruned model from its dense original."""

    model_type: str
    num_hidden_layers: int
    dense_parameters: int
    structure: PrunedStructure
    weight_reorder: bool
    steps: list[PruningStep] = field(default_factory=list)
    config: Optional[MultiPrunerConfig] = None  # the search's settings (None in imported records)
    start_perplexity: dict[str, float] = field(default_factory=dict)  # per calibration set, when first used
    search_stats: dict[str, Any] = field(default_factory=dict)
    shared_steps: int = 0  # first steps taken from a larger search (`prune(shared_from=...)`), not in search_stats
    source: str = "optimum-multipruner"
    target_reached: bool = True
    # What `apply` needs to rebuild the same kept KV groups and MLP channels on any device, in any dtype: per layer,
    # the weight-magnitude orders the search pruned along (`encode_weight_order`). None when the search did not
    # reorder, in imported records and in records written before this field (`apply` then sorts the weights again).
    weight_order: Optional[list[list[str]]] = None
    # What recovery after pruning did (`MultiPruner.recover`): its config, teacher, tokens seen, the SHA-256 of its
    # training token ids and the loss curve. None for a model that was not recovered.
    recovery: Optional[dict[str, Any]] = None
    # Set when the kept weights were refitted after pruning (`compensation`): the ridge strength, the calibration
    # text and each refit's reconstruction error (see `compensation.py`). Written only when set.
    compensation: Optional[dict[str, Any]] = None

    def layer_orders(self, model_config, adapter: ArchitectureAdapter) -> Optional[list[LayerOrder]]:
        """The decoded `weight_order` (None if absent); `ValueError` unless it orders every KV group and MLP channel of
        the dense model `model_config` describes."""
        if self.weight_order is None:
            return None
        layout = adapter.attention_layout(model_config)
        sizes = (layout.num_kv_heads, model_config.intermediate_size)
        if not isinstance(self.weight_order, list) or len(self.weight_order) != model_config.num_hidden_layers:
            raise ValueError(f"Corrupted pruning record: `weight_order` must have one entry per decoder layer "
                             f"({model_config.num_hidden_layers}).")
        orders = []
        for i, entry in enumerate(self.weight_order):
            try:
                kv_order, mlp_order = (_decode_order(text, size) for text, size in zip(entry, sizes, strict=True))
            except (TypeError, ValueError, binascii.Error) as error:
                raise ValueError(f"Corrupted pruning record: `weight_order` of layer {i} is not an order of its "
                                 f"{sizes[0]} KV groups and {sizes[1]} MLP channels ({error}).") from error
            orders.append((kv_order, mlp_order))
        return orders

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": RECORD_FORMAT,
            "version": 1,
            "source": self.source,
            "model_type": self.model_type,
            "num_hidden_layers": self.num_hidden_layers,
            "dense_parameters": self.dense_parameters,
            "weight_reorder": self.weight_reorder,
            "weight_order": self.weight_order,
            "config": None if self.config is None else self.config.to_dict(),
            "start_perplexity": self.start_perplexity,
            "target_reached": self.target_reached,
            "steps": [step.to_dict() for step in self.steps],
            "structure": self.structure.to_dict(),
            "search_stats": self.search_stats,
            "shared_steps": self.shared_steps,
        }
        if self.recovery is not None:
            data["recovery"] = self.recovery
        if self.compensation is not None:
            data["compensation"] = self.compensation
        return data

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
                config=None if data.get("config") is None else MultiPrunerConfig.from_dict_leniently(
                    data["config"], "pruning record"),
                start_perplexity=data.get("start_perplexity", {}),
                search_stats=data.get("search_stats", {}),
                shared_steps=data.get("shared_steps", 0),
                source=data.get("source", "optimum-multipruner"),
                target_reached=data.get("target_reached", True),
                weight_order=data.get("weight_order"),
                recovery=data.get("recovery"),
                compensation=data.get("compensation"),
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


def encode_weight_order(orders: list[LayerOrder]) -> list[list[str]]:
    """Per layer `[KV groups, MLP channels]`, each order as base64 of its little-endian indices, 16-bit up to 65536
    entries, else 32-bit (2.7 bytes per channel: 1.2 MB of JSON for Llama-3-8B, 6 MB for Llama-3-70B)."""
    return [[_encode_order(order) for order in layer_orders] for layer_orders in orders]


def _index_dtype(size: int) -> str:
    return "<u2" if size <= 1 << 16 else "<u4"


def _encode_order(order: torch.Tensor) -> str:
    return base64.b64encode(order.cpu().numpy().astype(_index_dtype(len(order))).tobytes()).decode("ascii")


def _decode_order(text: str, size: int) -> torch.Tensor:
    """`[size]` int64 indices; `ValueError` unless they are a permutation of `range(size)`."""
    data = base64.b64decode(text, validate=True)
    order = torch.from_numpy(np.frombuffer(data, dtype=_index_dtype(size)).astype(np.int64))
    if not torch.equal(order.sort().values, torch.arange(size)):
        raise ValueError(f"not a permutation of {size} indices")
    return order


def _imported_record(structure: PrunedStructure, adapter: ArchitectureAdapter, config, weight_reorder: bool,
                     source: str, steps: list[PruningStep]) -> PruningRecord:
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
        steps.append(PruningStep(k, BLOCK_STAGE, actions[kind], layer, None, None, None, 0))
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
