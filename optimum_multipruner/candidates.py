"""Search candidates: one unit of structure a greedy step may remove, and how to apply it (for good or for a trial)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from torch import nn

from .architectures import ArchitectureAdapter, AttentionLayout
from .configuration import ATTENTION_STAGE, BLOCK_STAGE, MLP_STAGE
from .surgery import (
    has_attention,
    has_mlp,
    keep_first_kv_groups,
    keep_first_mlp_channels,
    remove_attention,
    remove_mlp,
)

REMOVE_ATTENTION = "remove_attention"
REMOVE_MLP = "remove_mlp"
SHRINK_MLP = "shrink_mlp"
SHRINK_ATTENTION = "shrink_attention"

STAGE_ACTIONS = {
    BLOCK_STAGE: (REMOVE_ATTENTION, REMOVE_MLP),
    MLP_STAGE: (SHRINK_MLP,),
    ATTENTION_STAGE: (SHRINK_ATTENTION,),
}


@dataclass(frozen=True)
class Candidate:
    """Remove a sub-block of `layer`, or shrink its MLP / attention width by one group."""

    action: str
    layer: int

    def __str__(self) -> str:
        return f"{self.action}[{self.layer}]"

    @classmethod
    def from_string(cls, text: str) -> "Candidate":
        """The candidate `str(candidate)` wrote, e.g. `remove_mlp[3]`."""
        action, _, layer = text.partition("[")
        if not layer.endswith("]") or not layer[:-1].isdigit():
            raise ValueError(f"Not a search candidate: {text!r} (expected e.g. 'remove_mlp[3]').")
        return cls(action, int(layer[:-1]))


@dataclass(frozen=True)
class PruningGranularity:
    """Group sizes of the width stages and the block kinds the block stage may remove."""

    mlp_group: int  # intermediate channels per MLP step
    attention_group: int  # query channels per attention step (a multiple of one KV group)
    block_types: tuple[str, ...] = ("attention", "mlp")


def candidates_for(stage: str, layers: nn.ModuleList, adapter: ArchitectureAdapter, layout: AttentionLayout,
                   granularity: PruningGranularity) -> list[Candidate]:
    """Every candidate of a stage, in the reference order: attention blocks by layer, then MLP blocks by layer;
    width candidates by layer. A width never reaches zero, and removed sub-blocks are not width candidates."""
    result = []
    if stage == BLOCK_STAGE:
        if "attention" in granularity.block_types:
            result += [Candidate(REMOVE_ATTENTION, i) for i, l in enumerate(layers) if has_attention(l, adapter)]
        if "mlp" in granularity.block_types:
            result += [Candidate(REMOVE_MLP, i) for i, l in enumerate(layers) if has_mlp(l, adapter)]
    elif stage == MLP_STAGE:
        result = [
            Candidate(SHRINK_MLP, i)
            for i, l in enumerate(layers)
            if has_mlp(l, adapter) and adapter.mlp_width(adapter.mlp(l)) - granularity.mlp_group > 0
        ]
    elif stage == ATTENTION_STAGE:
        result = [
            Candidate(SHRINK_ATTENTION, i)
            for i, l in enumerate(layers)
            if has_attention(l, adapter)
            and adapter.kv_heads(adapter.attention(l), layout) * layout.group_width - granularity.attention_group > 0
        ]
    else:
        raise ValueError(f"Unknown stage {stage!r}.")
    return result


def apply_candidate(layer: nn.Module, candidate: Candidate, adapter: ArchitectureAdapter, layout: AttentionLayout,
                    granularity: PruningGranularity) -> None:
    """Apply `candidate` to its layer for good (physically)."""
    if candidate.action == REMOVE_ATTENTION:
        remove_attention(layer, adapter)
    elif candidate.action == REMOVE_MLP:
        remove_mlp(layer, adapter)
    elif candidate.action == SHRINK_MLP:
        keep_first_mlp_channels(layer, adapter, adapter.mlp_width(adapter.mlp(layer)) - granularity.mlp_group)
    elif candidate.action == SHRINK_ATTENTION:
        groups = adapter.kv_heads(adapter.attention(layer), layout) - granularity.attention_group // layout.group_width
        keep_first_kv_groups(layer, adapter, layout, groups)
    else:
        raise ValueError(f"Unknown action {candidate.action!r}.")


@contextmanager
def trial(layer: nn.Module, candidate: Candidate, adapter: ArchitectureAdapter, layout: AttentionLayout,
          granularity: PruningGranularity) -> Iterator[None]:
    """Apply `candidate` for the duration of the block, then put the layer back exactly as it was."""
    snapshots = [_snapshot(module) for module in (layer, adapter.attention(layer), adapter.mlp(layer))]
    try:
        apply_candidate(layer, candidate, adapter, layout, granularity)
        yield
    finally:
        for snapshot in snapshots:
            _restore(snapshot)


def _snapshot(module: nn.Module) -> tuple:
    return module, module.__class__, dict(module.__dict__), dict(module._modules)


def _restore(snapshot: tuple) -> None:
    module, cls, attributes, children = snapshot
    module.__class__ = cls
    module.__dict__.clear()
    module.__dict__.update(attributes)
    module._modules.clear()
    module._modules.update(children)
