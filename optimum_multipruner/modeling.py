"""Registered pruned model types (`multipruner_<family>`) that stock `transformers` saves and loads.

A pruned checkpoint keeps every dense field of its family's config and adds one `pruning` section (per-layer kept
query heads, KV heads and MLP width). Its model class applies that structure in `post_init`, before weights load, so
`AutoModelForCausalLM.from_pretrained` finds tensors of exactly the right shapes.
"""

from __future__ import annotations

import copy
import glob
import os
import sys
from typing import Any, Iterable, Iterator, Optional, Union

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from .architectures import ADAPTERS, PRUNED_MODEL_TYPE_PREFIX, ArchitectureAdapter
from .compat import attention_implementation, set_attention_implementation
from .structure import PrunedStructure
from .surgery import apply_structure, compact_cache_slots, count_parameters, dense_parameter_count, read_structure

PRUNED_CONFIG_CLASSES: dict[str, type] = {}
PRUNED_MODEL_CLASSES: dict[str, type] = {}


def kept_layer_types(config) -> Optional[list[str]]:
    """The kind (`config.layer_types` entry: sliding window or full) of each kept attention, in KV-cache slot order;
    `None` for a config without `layer_types` or without a `pruning` section."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None or getattr(config, "pruning", None) is None:
        return None
    return [kind for kind, heads in zip(layer_types, config.pruning["num_key_value_heads"]) if heads]


def _cache_view(config, kinds: list[str]):
    """A copy of `config` describing the KV cache of the kept attentions: one layer per slot, of its layer's kind."""
    view = copy.copy(config)
    view.pruning = None  # the view is already compact
    view.layer_types = kinds
    view.num_hidden_layers = len(kinds)
    return view


def _make_pruned_classes(adapter: ArchitectureAdapter) -> tuple[type, type]:
    model_type = PRUNED_MODEL_TYPE_PREFIX + adapter.model_type
    module = sys.modules[__name__]

    def get_text_config(self, decoder=None, encoder=None):
        """As the family's, but the decoder config every transformers cache is built from (`DynamicCache`,
        `StaticCache`, `generate`) has one layer per kept attention, of that attention's kind: slots are compact
        (`surgery.compact_cache_slots`), and a slot read by the index of `layer_types` would get another layer's
        kind (a sliding-window slot for a full attention or the reverse)."""
        text_config = adapter.config_class.get_text_config(self, decoder=decoder, encoder=encoder)
        kinds = kept_layer_types(self)
        if not decoder or text_config is not self or kinds is None or len(kinds) == len(self.layer_types):
            return text_config
        return _cache_view(self, kinds)

    config_class = type(
        f"MultiPruned{adapter.stem}Config",
        (adapter.config_class,),
        {
            "__module__": __name__,
            "__doc__": f"`{adapter.config_class.__name__}` plus the `pruning` section of a MultiPruner checkpoint.",
            "__annotations__": {"pruning": Optional[dict]},
            "model_type": model_type,
            "pruning": None,
            "get_text_config": get_text_config,
        },
    )

    def post_init(self) -> None:
        if self.config.pruning is not None:
            apply_structure(self, adapter, PrunedStructure.from_dict(self.config.pruning))
        compact_cache_slots(self, adapter)
        adapter.causal_lm_class.post_init(self)

    def from_pretrained(cls, *args, **kwargs):
        """Stock loading, but a tensor whose shape disagrees with the `pruning` section is an error, not a re-init."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # collect the mismatches, then refuse them below with their names
        model, info = adapter.causal_lm_class.from_pretrained.__func__(cls, *args, output_loading_info=True, **kwargs)
        if info.get("mismatched_keys"):
            raise ValueError(
                "The checkpoint's tensors do not match its `pruning` section (config.json): "
                f"{_describe_mismatches(info['mismatched_keys'])}. The checkpoint is corrupted or was edited."
            )
        return (model, info) if want_info else model

    model_class = type(
        f"MultiPruned{adapter.stem}ForCausalLM",
        (adapter.causal_lm_class,),
        {
            "__module__": __name__,
            "__doc__": f"`{adapter.causal_lm_class.__name__}` with per-layer pruned attention heads and MLP widths.",
            "config_class": config_class,
            "post_init": post_init,
            "from_pretrained": classmethod(from_pretrained),
        },
    )
    setattr(module, config_class.__name__, config_class)
    setattr(module, model_class.__name__, model_class)
    return config_class, model_class


def _describe_mismatches(mismatches) -> str:
    """`model.layers.3.mlp.up_proj.weight: checkpoint [128, 64] vs pruning [192, 64]`, for each mismatch."""
    parts = []
    for entry in sorted(mismatches, key=str):
        if isinstance(entry, (tuple, list)) and len(entry) == 3:
            key, checkpoint_shape, model_shape = entry
            parts.append(f"{key}: checkpoint {list(checkpoint_shape)} vs pruning {list(model_shape)}")
        else:
            parts.append(str(entry))
    return "; ".join(parts)


def register_pruned_models() -> None:
    """Create and register the pruned config/model class of every supported family with the Auto classes."""
    for base_type, adapter in ADAPTERS.items():
        if base_type in PRUNED_CONFIG_CLASSES:
            continue
        config_class, model_class = _make_pruned_classes(adapter)
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
        PRUNED_CONFIG_CLASSES[base_type] = config_class
        PRUNED_MODEL_CLASSES[base_type] = model_class


def to_pruned_model(model: nn.Module, adapter: ArchitectureAdapter, structure: PrunedStructure) -> nn.Module:
    """Turn a physically pruned model into its registered pruned class, in place (no weight is copied)."""
    register_pruned_models()
    old_config = model.config
    values = {k: v for k, v in old_config.to_dict().items() if k not in ("model_type", "architectures", "pruning")}
    values["pruning"] = structure.to_dict()
    new_config = PRUNED_CONFIG_CLASSES[adapter.model_type].from_dict(values)
    set_attention_implementation(new_config, attention_implementation(old_config))
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = new_config
    model.__class__ = PRUNED_MODEL_CLASSES[adapter.model_type]
    compact_cache_slots(model, adapter)
    return model


def layer_summary(config) -> dict[str, Any]:
    """What each decoder layer of a model with `config` (pruned or dense) keeps: attention heads, KV heads, MLP width
    and parameters, from the config alone (the model is built on `meta`); the table of `optimum-cli multipruner info`
    and of the model card."""
    from .architectures import get_adapter

    register_pruned_models()
    adapter = get_adapter(config)
    if not isinstance(config, PRUNED_CONFIG_CLASSES[adapter.model_type]):
        values = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")}
        config = PRUNED_CONFIG_CLASSES[adapter.model_type].from_dict(values)
    with torch.device("meta"):
        model = PRUNED_MODEL_CLASSES[adapter.model_type](config)
    structure = read_structure(model, adapter)
    rows = [
        {"layer": index, "attention_heads": heads, "kv_heads": kv_heads, "mlp_width": width,
         "parameters": count_parameters(layer)}
        for index, (layer, heads, kv_heads, width) in enumerate(
            zip(adapter.decoder_layers(model), structure.num_attention_heads, structure.num_key_value_heads,
                structure.intermediate_size)
        )
    ]
    layout = adapter.attention_layout(config)
    return {
        "model_type": adapter.model_type,
        "dense": {"attention_heads": layout.num_heads, "kv_heads": layout.num_kv_heads,
                  "mlp_width": config.intermediate_size},
        "layers": rows,
        "parameters": count_parameters(model),
        "dense_parameters": dense_parameter_count(config, adapter),
    }


def first_non_finite_weight(model: nn.Module) -> Optional[str]:
    """The name of the first floating-point weight (parameter or buffer) holding NaN or infinity, or None."""
    return _first_non_finite(model.state_dict().items())


def check_finite_weights(model_or_dir: Union[nn.Module, str, os.PathLike]) -> None:
    """`ValueError` when a weight of a model, or of a local checkpoint folder's safetensors files (read one tensor at
    a time), holds NaN or infinity: a diverged training run. A Hub id is not checked (nothing is downloaded)."""
    if isinstance(model_or_dir, nn.Module):
        name = first_non_finite_weight(model_or_dir)
    elif os.path.isdir(model_or_dir):
        name = _first_non_finite(_saved_tensors(str(model_or_dir)))
    else:
        return
    if name is not None:
        raise ValueError(f"The model's weights are not finite ({name} holds NaN or infinity): a diverged model "
                         "only produces NaN; nothing is written.")


def _saved_tensors(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def _first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Optional[str]:
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
