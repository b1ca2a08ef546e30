"""What MultiPruner needs to know about a decoder family, and the registry of supported families.

A family is one module of this package holding an `ArchitectureAdapter` subclass decorated with `@register_adapter`;
the package imports every such module, and the pruned model classes, the OpenVINO export configs and the error
messages all follow `ADAPTERS`. The base class covers families with separate q/k/v/o and gate/up/down projections;
a family states its model classes and its decoder-layer layout, and overrides what differs (e.g. fused projections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, TypeVar

import torch
from torch import nn

ADAPTERS: dict[str, "ArchitectureAdapter"] = {}  # model_type -> adapter, filled by `@register_adapter`


@dataclass(frozen=True)
class AttentionLayout:
    """Dense attention geometry, read from the (dense) global config."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def heads_per_group(self) -> int:
        """Query heads that share one KV head (`n_rep`)."""
        return self.num_heads // self.num_kv_heads

    @property
    def group_width(self) -> int:
        """Query channels of one whole KV group: the smallest unit attention pruning removes."""
        return self.heads_per_group * self.head_dim


@dataclass(frozen=True)
class DecoderLayerLayout:
    """The child modules of one decoder layer, every one accounted for.

    `attention_norms` / `mlp_norms` are the norms that belong to that branch alone (on its input or its output) and
    go with it when the branch is removed. `other` are parameter-free children pruning leaves alone (e.g. dropouts).
    A layer with any child not named here is refused (`ArchitectureAdapter.check_layer`): its role is unknown.
    """

    attention: str
    mlp: str
    attention_norms: tuple[str, ...]
    mlp_norms: tuple[str, ...]
    other: tuple[str, ...] = ()

    @property
    def children(self) -> frozenset[str]:
        return frozenset((self.attention, self.mlp, *self.attention_norms, *self.mlp_norms, *self.other))


PRE_NORM_LAYER = DecoderLayerLayout(
    attention="self_attn", mlp="mlp", attention_norms=("input_layernorm",), mlp_norms=("post_attention_layernorm",)
)
"""`h = x + self_attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))` (Llama and its kin).

Only for families whose layer really is this; a post-norm family (norms on the branch outputs, e.g. OLMo2's
`post_attention_layernorm` + `post_feedforward_layernorm`) names its own norms."""

SANDWICH_NORM_LAYER = DecoderLayerLayout(
    attention="self_attn",
    mlp="mlp",
    attention_norms=("input_layernorm", "post_attention_layernorm"),
    mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
)
"""`h = x + post_attention_layernorm(self_attn(input_layernorm(x)))`, and the MLP between
`pre_feedforward_layernorm` and `post_feedforward_layernorm` (Gemma 2 and 3): a removed branch takes both its norms."""


def select_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new `nn.Linear` keeping output rows (`dim=0`, bias too) or input columns (`dim=1`) `index`, in that order.

    Works on real and meta tensors, so the same code prunes a loaded model and shapes an empty one before loading.
    """
    index = index.to(linear.weight.device)
    weight = linear.weight.index_select(dim, index)  # dim 0: [len(index), in], dim 1: [out, len(index)]
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return new


def kv_group_rows(group_index: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """Row indices of whole groups: `[g0*r, ..., g0*r + r-1, g1*r, ...]`."""
    offsets = torch.arange(rows_per_group, device=group_index.device)
    return (group_index[:, None] * rows_per_group + offsets[None, :]).reshape(-1)


def l1_rows(weight: torch.Tensor) -> torch.Tensor:
    """`[rows]`: L1 norm of each row, summed in float32 or wider whatever the weight's dtype.

    The weight is cast *before* `abs`/`sum`, so a float32 weight gives exactly the float32 scores of before and a
    bfloat16 weight the same scores as its float32 copy (a bf16 sum has only a few distinct values on wide layers).
    """
    return weight.to(torch.promote_types(weight.dtype, torch.float32)).abs().sum(dim=1)


class ArchitectureAdapter:
    """Module names, projection layout and weight surgery of one decoder family.

    Subclasses set `model_type`, `display_name`, `stem`, `config_class`, `causal_lm_class` and `layer_layout`, and
    register with `@register_adapter`; families with fused projections override the projection methods. Every method
    that changes a module keeps whole KV groups.

    The contract with the search: a candidate changes one decoder layer, and only through `replace_attention`,
    `replace_mlp`, `select_kv_groups` and `select_mlp_channels`. These may replace child modules of the layer, of its
    attention and of its MLP (new modules holding new tensors, see [`select_linear`]), set plain attributes of those
    three modules (e.g. a head count) and change their `__class__` (Phi-3 swaps in its pruned attention class). They
    must not write into an existing tensor, assign a parameter or buffer directly, nor touch any other module:
    `candidates.trial` scores a candidate and then restores exactly the layer, its attention and its MLP (their
    `__class__`, `__dict__` and `_modules`), so any other change would leak into every candidate scored after it.
    `tests/architectures/test_base.py` checks that a trial of every candidate kind leaves every family's weights,
    module classes and logits as they were.
    """

    model_type: ClassVar[str]
    display_name: ClassVar[str]  # for people, e.g. "Llama 2/3.x"
    stem: ClassVar[str]  # class-name stem, e.g. "Llama" -> MultiPrunedLlamaForCausalLM
    config_class: ClassVar[type]
    causal_lm_class: ClassVar[type]
    layer_layout: ClassVar[DecoderLayerLayout]
    openvino_max_transformers_version: ClassVar[Optional[str]] = None
    """The newest transformers (optimum's `"x.y.99"` = any x.y) with which this family's pruned OpenVINO export was
    verified, where optimum-intel's stock export config caps transformers lower; `None` keeps the stock cap."""

    # ----------------------------------------------------------------- navigation
    @staticmethod
    def decoder_layers(model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    @staticmethod
    def final_norm(model: nn.Module) -> nn.Module:
        return model.model.norm

    def head_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """`[batch, seq, vocab]` logits from the last decoder layer's output, as the model's forward computes them."""
        return model.get_output_embeddings()(self.final_norm(model)(hidden))

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.layer_layout.attention)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.layer_layout.mlp)

    def replace_attention(self, layer: nn.Module, module: nn.Module) -> None:
        """Put `module` in place of the attention branch, and `Identity` in place of the norms that belong to it."""
        self._replace(layer, {self.layer_layout.attention: module, **dict.fromkeys(self.layer_layout.attention_norms)})

    def replace_mlp(self, layer: nn.Module, module: nn.Module) -> None:
        """Put `module` in place of the MLP branch, and `Identity` in place of the norms that belong to it."""
        self._replace(layer, {self.layer_layout.mlp: module, **dict.fromkeys(self.layer_layout.mlp_norms)})

    def check_layer(self, layer: nn.Module, index: int) -> None:
        """`ValueError` unless the layer's children are exactly those of `layer_layout` (an unknown layout)."""
        children, expected = frozenset(layer._modules), self.layer_layout.children
        if children != expected:
            raise ValueError(
                f"Decoder layer {index} ({type(layer).__name__}) has the modules {sorted(children)}, but the "
                f"{self.display_name} adapter knows {sorted(expected)}: unknown {sorted(children - expected)}, missing "
                f"{sorted(expected - children)}. MultiPruner cannot tell which norms belong to which branch of this "
                "layer; its adapter (optimum_multipruner/architectures) must state its `layer_layout`."
            )

    @staticmethod
    def _replace(layer: nn.Module, modules: dict[str, Optional[nn.Module]]) -> None:
        """Set the children `modules` (`None`: `Identity`), all or none: each must exist already."""
        missing = [name for name in modules if name not in layer._modules]
        if missing:
            raise AttributeError(f"{type(layer).__name__} has no child module {', '.join(missing)}.")
        for name, module in modules.items():
            setattr(layer, name, nn.Identity() if module is None else module)

    @staticmethod
    def attention_layout(config) -> AttentionLayout:
        num_heads = config.num_attention_heads
        num_kv_heads = config.num_key_value_heads or num_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return AttentionLayout(num_heads, num_kv_heads, head_dim)

    # ----------------------------------------------------------------- what may be removed
    def attention_removal_blocker(self, config) -> Optional[str]:
        """Why whole attention branches cannot be removed from a model with `config`, or `None` if they can.

        A pruned model gives each kept attention the KV-cache slot of its rank among kept attentions
        (`surgery.compact_cache_slots`), and its config gives each slot the kind (`layer_types`: sliding window or full)
        of the layer that attention came from (`modeling.kept_layer_types`); masks, rotary embeddings and NoPE follow
        each layer's own kind. Every family carries that; a family that cannot overrides this with its reason.
        """
        return None

    def gguf_blocker(self, config) -> Optional[str]:
        """What llama.cpp's `deci` graph (the GGUF export's architecture) lacks for this family, in one line, or
        `None` when the family exports (checks that hold for every family live in `exporters.gguf`)."""
        return None

    # ----------------------------------------------------------------- widths of a live module
    def kv_heads(self, attention: nn.Module, layout: AttentionLayout) -> int:
        """KV heads an attention module currently has."""
        return attention.k_proj.out_features // layout.head_dim

    def mlp_width(self, mlp: nn.Module) -> int:
        return mlp.up_proj.out_features

    # ----------------------------------------------------------------- importance scores (weight-magnitude reordering)
    def kv_group_scores(self, attention: nn.Module, layout: AttentionLayout) -> torch.Tensor:
        """`[kv_heads]`: mean over a KV group's query rows of L1(q row) + L1(k row) + L1(v row) (reference rule), in
        float32 or wider whatever the weights' dtype."""
        q, k, v = self.qkv_weights(attention)  # [kv*n_rep*hd, hidden], [kv*hd, hidden], [kv*hd, hidden]
        kv = k.shape[0] // layout.head_dim
        q_score = l1_rows(q).view(kv, -1).mean(dim=1)  # [kv]
        kv_score = (l1_rows(k) + l1_rows(v)).view(kv, -1).mean(dim=1)  # [kv]
        return q_score + kv_score

    def mlp_channel_scores(self, mlp: nn.Module) -> torch.Tensor:
        """`[intermediate]`: L1(gate row) + L1(up row) (reference rule; down_proj is not scored), in float32 or
        wider."""
        gate, up = self.gate_up_weights(mlp)
        return l1_rows(gate) + l1_rows(up)

    def qkv_weights(self, attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight

    def gate_up_weights(self, mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return mlp.gate_proj.weight, mlp.up_proj.weight

    # ----------------------------------------------------------------- output projections (compensation)
    def attention_output_projection(self, attention: nn.Module) -> nn.Linear:
        """The linear layer whose input columns are the attention's query channels (sliced with the KV groups)."""
        return attention.o_proj

    def mlp_output_projection(self, mlp: nn.Module) -> nn.Linear:
        """The linear layer whose input columns are the MLP's intermediate channels."""
        return mlp.down_proj

    # ----------------------------------------------------------------- surgery
    def select_kv_groups(self, attention: nn.Module, groups: torch.Tensor, layout: AttentionLayout) -> None:
        """Keep KV groups `groups` (in that order): their query heads, K/V heads and the matching o_proj columns."""
        q_rows = kv_group_rows(groups, layout.group_width)
        kv_rows = kv_group_rows(groups, layout.head_dim)
        attention.q_proj = select_linear(attention.q_proj, q_rows, dim=0)
        attention.k_proj = select_linear(attention.k_proj, kv_rows, dim=0)
        attention.v_proj = select_linear(attention.v_proj, kv_rows, dim=0)
        attention.o_proj = select_linear(attention.o_proj, q_rows, dim=1)

    def select_mlp_channels(self, mlp: nn.Module, channels: torch.Tensor) -> None:
        """Keep intermediate channels `channels` (in that order) of gate/up rows and down columns."""
        mlp.gate_proj = select_linear(mlp.gate_proj, channels, dim=0)
        mlp.up_proj = select_linear(mlp.up_proj, channels, dim=0)
        mlp.down_proj = select_linear(mlp.down_proj, channels, dim=1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(channels)


_REQUIRED = ("model_type", "display_name", "stem", "config_class", "causal_lm_class", "layer_layout")
Adapter = TypeVar("Adapter", bound=type)


def register_adapter(adapter_class: Adapter) -> Adapter:
    """Class decorator: make a family known to MultiPruner (search, apply, pruned model classes, OpenVINO export).

    Refuses an adapter that leaves a required class attribute unset, or a second adapter for a registered type.
    """
    missing = [name for name in _REQUIRED if getattr(adapter_class, name, None) is None]
    if missing:
        raise TypeError(f"{adapter_class.__name__} must set {', '.join(missing)} to be registered.")
    registered = ADAPTERS.get(adapter_class.model_type)
    if registered is not None and _name(type(registered)) != _name(adapter_class):
        raise ValueError(
            f"model_type {adapter_class.model_type!r} already has the adapter {type(registered).__name__}."
        )
    ADAPTERS[adapter_class.model_type] = adapter_class()
    return adapter_class


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"  # the same after a module reload
