"""`PrunedStructure`: what each decoder layer of a pruned model keeps; the `pruning` section of its `config.json`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .architectures import ArchitectureAdapter

STRUCTURE_VERSION = 1


@dataclass
class PrunedStructure:
    """What each decoder layer keeps: query heads, KV heads, MLP width (0 = sub-block removed).

    This is the `pruning` section of a pruned checkpoint's `config.json`.
    """

    num_attention_heads: list[int]
    num_key_value_heads: list[int]
    intermediate_size: list[int]

    @property
    def num_layers(self) -> int:
        return len(self.intermediate_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STRUCTURE_VERSION,
            "num_attention_heads": list(self.num_attention_heads),
            "num_key_value_heads": list(self.num_key_value_heads),
            "intermediate_size": list(self.intermediate_size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrunedStructure":
        if not isinstance(data, dict):
            raise ValueError(f"The `pruning` section must be an object, got {type(data).__name__}.")
        if data.get("version", STRUCTURE_VERSION) != STRUCTURE_VERSION:
            raise ValueError(f"Unsupported `pruning` version {data.get('version')!r} (this library reads version 1).")
        lists = {}
        for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            values = data.get(key)
            if not isinstance(values, list) or not all(isinstance(v, int) and v >= 0 for v in values):
                raise ValueError(f"`pruning.{key}` must be a list of non-negative integers, got {values!r}.")
            lists[key] = values
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError("`pruning` lists must all have one entry per decoder layer.")
        return cls(**lists)

    @classmethod
    def dense(cls, config, adapter: ArchitectureAdapter) -> "PrunedStructure":
        layout = adapter.attention_layout(config)
        layers = config.num_hidden_layers
        return cls([layout.num_heads] * layers, [layout.num_kv_heads] * layers, [config.intermediate_size] * layers)

    def validate(self, config, adapter: ArchitectureAdapter) -> None:
        """`ValueError` naming the first layer whose entry does not fit the dense model described by `config`, or that
        removes an attention the family does not allow removing (`ArchitectureAdapter.attention_removal_blocker`)."""
        layout = adapter.attention_layout(config)
        if self.num_layers != config.num_hidden_layers:
            raise ValueError(
                f"The pruning structure has {self.num_layers} layers but the model has {config.num_hidden_layers}."
            )
        for i, (heads, kv, width) in enumerate(
            zip(self.num_attention_heads, self.num_key_value_heads, self.intermediate_size)
        ):
            if kv > layout.num_kv_heads or heads != kv * layout.heads_per_group:
                raise ValueError(
                    f"Layer {i}: {heads} query heads / {kv} KV heads do not fit the model "
                    f"({layout.num_heads} heads, {layout.num_kv_heads} KV heads; only whole KV groups can be pruned)."
                )
            if width > config.intermediate_size:
                raise ValueError(
                    f"Layer {i}: MLP width {width} exceeds the model's intermediate size {config.intermediate_size}."
                )
        removed = [i for i, kv in enumerate(self.num_key_value_heads) if kv == 0]
        blocker = adapter.attention_removal_blocker(config) if removed else None
        if blocker is not None:
            raise ValueError(f"Layer {removed[0]} has its attention removed, but {blocker}.")
