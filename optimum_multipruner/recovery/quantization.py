"""Quantization-aware distillation: int4 weights trained against the teacher through NNCF's `FQ_LORA` format.

`nncf.compress_weights(..., compression_format=FQ_LORA)` replaces every linear weight by its fake-quantized value
(asymmetric int4 in groups, embeddings and the output head in int8) plus a trainable low-rank adapter that is
absorbed into the quantized weight; the scales train too. After training, `nncf.strip(..., StripFormat.DQ)` turns
each weight into packed int4 values with a decompressor, which the OpenVINO exporter writes as an int4 IR with the
same values (tested: the IR's logits match the fake-quantized PyTorch model). NNCF compiles a small CPU extension on
first use (a few minutes once, cached under `~/.cache/torch_extensions`); `fake_quantize` lifts NNCF's 60-second limit
on that build unless `NNCF_EXTENSION_LOAD_TIMEOUT` is set.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..utils import get_logger
from .configuration import RecoveryConfig

logger = get_logger(__name__)

_ADAPTER_NAMES = ("lora_A", "lora_B")


def is_fake_quantized(model: nn.Module) -> bool:
    """Whether `model` carries NNCF fake quantizers (a quantization-aware recovery, not stripped yet)."""
    from nncf.torch.quantization.layers import BaseQuantizer

    return any(isinstance(hook, BaseQuantizer) for hook in _nncf_hooks(model))


def is_int4_stripped(model: nn.Module) -> bool:
    """Whether `model` holds packed NNCF weights with decompressors (`strip_to_int4`'s result)."""
    from nncf.torch.quantization.layers import BaseWeightsDecompressor

    return any(isinstance(hook, BaseWeightsDecompressor) for hook in _nncf_hooks(model))


def _nncf_hooks(model: nn.Module) -> list[nn.Module]:
    if not any(name == "__nncf_hooks" for name, _ in model.named_children()):
        return []  # never touched by NNCF: no need to import it
    from nncf.torch.function_hook.wrapper import get_hook_storage

    return [hook for _, hook in get_hook_storage(model).named_hooks()]


def fake_quantize(model: nn.Module, config: RecoveryConfig, calibration: torch.Tensor) -> nn.Module:
    """Compress `model`'s weights in place to `FQ_LORA` (config's group size, ratio, adapter rank; AWQ and scale
    estimation on `calibration` `[n, seq_len]` unless `quantization_init="rtn"`, which still traces the model on it)
    and leave only the 4-bit quantizers' adapters and scales trainable. Returns `model`."""
    import nncf
    from nncf.parameters import CompressionFormat
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters
    from nncf.torch.function_hook.wrapper import get_hook_storage

    # NNCF compiles its CPU extension on first use and gives up after 60 s by default, which a busy machine exceeds;
    # an explicit setting of the user's wins
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    data_aware = config.quantization_init == "awq_scale_estimation"
    dataset = nncf.Dataset([{"input_ids": row[None]} for row in calibration])  # NNCF traces PyTorch models on it
    with torch.random.fork_rng(devices=[]):  # the adapters' random start follows `seed`, the caller's RNG is kept
        torch.manual_seed(config.seed)
        nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=config.quantization_group_size,
            ratio=config.quantization_ratio, compression_format=CompressionFormat.FQ_LORA, awq=data_aware,
            scale_estimation=data_aware, dataset=dataset, subset_size=len(calibration),
            advanced_parameters=AdvancedCompressionParameters(lora_adapter_rank=config.quantization_lora_rank),
        )
    model.requires_grad_(False)  # the weights, and the int8 quantizers' scales of embeddings and head, stay fixed
    for _, quantizer in get_hook_storage(model).named_hooks():
        if getattr(quantizer, "num_bits", None) == 4 and hasattr(quantizer, "enable_gradients"):
            quantizer.enable_gradients()
    return model


def check_group_size(model: nn.Module, group_size: int) -> None:
    """`ValueError` unless `group_size` divides the input width of every linear layer int4 applies to (all but the
    output head), so that no layer silently falls back to another precision."""
    head = model.get_output_embeddings()
    widths = {name: module.in_features for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and module is not head}
    misfits = {name: width for name, width in widths.items() if width % group_size}
    if misfits:
        name, width = next(iter(misfits.items()))
        raise ValueError(f"`quantization_group_size` {group_size} does not divide the input width of {len(misfits)} "
                         f"linear layers (e.g. {name}: {width}); choose a group size that divides every pruned width "
                         f"(widths here: {sorted(set(widths.values()))}).")


def parameter_groups(model: nn.Module, learning_rate: float, scale_learning_rate: float) -> list[dict[str, Any]]:
    """The trainable parameters of a fake-quantized model: adapters at `learning_rate`, quantizer scales at
    `scale_learning_rate`, no weight decay."""
    adapters, scales = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (adapters if name.rsplit(".", 1)[-1] in _ADAPTER_NAMES else scales).append(parameter)
    return [{"params": adapters, "lr": learning_rate, "weight_decay": 0.0},
            {"params": scales, "lr": scale_learning_rate, "weight_decay": 0.0}]


def strip_to_int4(model: nn.Module) -> nn.Module:
    """Turn a fake-quantized model, in place, into packed int4/int8 weights with decompressors (what the OpenVINO
    exporter writes as an int4 IR). Returns `model`."""
    import nncf
    from nncf.parameters import StripFormat

    return nncf.strip(model, do_copy=False, strip_format=StripFormat.DQ)
