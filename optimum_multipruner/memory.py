"""Memory a search needs beyond the model's weights, known before it starts, and the check that it fits.

The accelerated search caches the hidden states entering every decoder layer for every calibration sequence:
`layers x sequences x seq_len x hidden x element size` (Llama-3.1-8B in bf16, 20 sequences of 2048 tokens: 10.7 GB).
Each layer's share lives on the device that layer runs on, or on `MultiPrunerConfig.cache_device`. Every device that
runs layers also keeps one copy of the layer call arguments (rotary embeddings; the mask under eager attention) per
batch, and needs the working memory of one pass: one decoder layer's activations on one batch, or the final norm +
`lm_head` + loss, which runs in chunks of positions (`nll.head_chunk_bytes`).
[`estimate_search_memory`] computes all of it from a model config alone (no weights needed);
[`check_search_memory`] compares it with what each device of a loaded model has free and refuses a search that does
not fit, before anything changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import psutil
import torch
from torch import nn

from . import compat
from .architectures import ArchitectureAdapter, get_adapter
from .configuration import MultiPrunerConfig
from .devices import DeviceLike, as_device, decoder_layer_devices, execution_device
from .nll import head_chunk_bytes

GIB = 2**30


class SearchMemoryError(MemoryError):
    """The search would not fit in the memory a device has free."""


@dataclass(frozen=True)
class SearchMemoryEstimate:
    """Bytes a search needs beyond the weights, by device name (`str(torch.device)`)."""

    hidden_cache: dict[str, int] = field(default_factory=dict)  # cached layer inputs (+ the KL reference states)
    layer_arguments: dict[str, int] = field(default_factory=dict)  # layer call arguments, one copy per device
    scoring_pass: dict[str, int] = field(default_factory=dict)  # one layer's activations or the head, on one batch
    cache_per_layer: int = 0  # bytes of one layer's cached inputs (all sequences)
    transfer_per_candidate: int = 0  # bytes moved from `cache_device` to a layer's device for each candidate

    @property
    def per_device(self) -> dict[str, int]:
        """Total bytes needed on each device."""
        parts = (self.hidden_cache, self.layer_arguments, self.scoring_pass)
        devices = sorted(set().union(*parts))
        return {device: sum(part.get(device, 0) for part in parts) for device in devices}


def estimate_search_memory(
    model_config,
    config: MultiPrunerConfig,
    num_sequences: Union[int, Mapping[str, int]],
    dtype: Optional[torch.dtype] = None,
    layer_devices: Optional[Sequence[DeviceLike]] = None,
    head_device: Optional[DeviceLike] = None,
) -> SearchMemoryEstimate:
    """Memory a search of `config` on a model of `model_config` needs beyond its weights, by device (no weights needed).

    Args:
        model_config: the (dense) `transformers` config of a supported family.
        config: the search settings (`sequence_length`, `batch_size`, `accelerated_search`, `cache_device`,
            `head_chunk_size`, `importance_metric`).
        num_sequences: sequences of each calibration set (`{"block": 20, "width": 10}`), or of the largest. The sets
            are scored one after the other, so the largest one's cache counts; the KL objective keeps a reference
            for every set. (The reference's 256 Alpaca rows give about 20 sequences of 2048 tokens with a Llama-3
            tokenizer.)
        dtype: the weights' dtype (default: `model_config.dtype`, else float32).
        layer_devices: the device each decoder layer runs on (default: all on `"cuda"`).
        head_device: where the final norm and `lm_head` run (default: the last layer's device).
    """
    sets = dict(num_sequences) if isinstance(num_sequences, Mapping) else {"calibration": num_sequences}
    num_sequences = max(sets.values())
    kl = config.importance_metric == "kl"
    adapter = get_adapter(model_config)
    layout = adapter.attention_layout(model_config)
    hidden, intermediate = model_config.hidden_size, model_config.intermediate_size
    num_layers, vocab_size = model_config.num_hidden_layers, model_config.vocab_size
    dtype = dtype or _config_dtype(model_config)
    itemsize = torch.finfo(dtype).bits // 8
    seq_len, batch = config.sequence_length, min(config.batch_size, num_sequences)
    tokens = batch * seq_len  # positions of one batch
    eager = compat.attention_implementation(model_config) == "eager"
    devices = [_device_name(d) for d in (layer_devices or ["cuda"] * num_layers)]
    if len(devices) != num_layers:
        raise ValueError(f"`layer_devices` has {len(devices)} entries for {num_layers} decoder layers.")
    head = _device_name(head_device) if head_device is not None else devices[-1]

    per_layer = num_sequences * seq_len * hidden * itemsize  # one layer's inputs for every sequence
    cache, arguments = {}, {}
    if config.accelerated_search:
        for device in devices:
            holder = device if config.cache_device is None else _device_name(config.cache_device)
            cache[holder] = cache.get(holder, 0) + per_layer
        # Per batch: rotary cos and sin ([1, seq_len, head_dim]) and position ids ([1, seq_len], int64), shared by
        # the batch's sequences; under eager attention, a [batch, 1, seq_len, seq_len] mask.
        per_batch = (2 * layout.head_dim * itemsize + 8) * seq_len
        masks = num_sequences * seq_len * seq_len * itemsize if eager else 0
        for device in set(devices):
            arguments[device] = math.ceil(num_sequences / batch) * per_batch + masks
    if kl:  # the original model's final hidden states of every calibration set
        holder = devices[-1] if config.cache_device is None else _device_name(config.cache_device)
        cache[holder] = cache.get(holder, 0) + sum(sets.values()) * seq_len * hidden * itemsize

    # One decoder layer on one batch: input, residual and normed states; then the larger of attention (q, k, v before
    # and after rotary, its output; eager: the scores, their float32 softmax and its cast back) and the MLP (fused
    # gate/up rows, the activation and the product).
    qkv = layout.num_heads + 2 * layout.num_kv_heads
    attention = tokens * itemsize * (2 * qkv + layout.num_heads) * layout.head_dim
    if eager:
        attention += batch * layout.num_heads * seq_len * seq_len * (4 + 2 * itemsize)
    layer_pass = tokens * itemsize * 3 * hidden + max(attention, tokens * itemsize * 4 * intermediate)
    chunk = min(config.head_chunk_size, seq_len - 1)
    head_pass = tokens * itemsize * 2 * hidden + head_chunk_bytes(batch, chunk, vocab_size, dtype, kl)
    scoring = {device: layer_pass for device in set(devices)}
    scoring[head] = max(scoring.get(head, 0), head_pass)

    moves = config.cache_device is not None and any(d != _device_name(config.cache_device) for d in devices)
    return SearchMemoryEstimate(cache, arguments, scoring, per_layer,
                                per_layer if config.accelerated_search and moves else 0)


def free_memory(device: torch.device) -> Optional[int]:
    """Bytes `device` can still give: free CUDA memory plus what PyTorch's allocator holds unused; available RAM on
    the CPU; `None` (unknown, not checked) elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return psutil.virtual_memory().available
    return None


def check_search_memory(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: MultiPrunerConfig,
    calibration: Mapping[str, torch.Tensor],
) -> SearchMemoryEstimate:
    """Estimate the search's memory on the devices this model runs on and raise `SearchMemoryError` (both numbers
    and the ways out) if a device does not have it free."""
    num_sequences = max(len(sequences) for sequences in calibration.values())
    embedding = model.get_input_embeddings().weight
    estimate = estimate_search_memory(
        model.config,
        config,
        {name: len(sequences) for name, sequences in calibration.items()},
        dtype=embedding.dtype,
        layer_devices=decoder_layer_devices(model, adapter.decoder_layers(model)),
        head_device=execution_device(model.get_output_embeddings()),
    )
    for device, needed in estimate.per_device.items():
        free = free_memory(torch.device(device))
        if free is None or needed <= free:
            continue
        cache = estimate.hidden_cache.get(device, 0)
        ways_out = [
            "fewer or shorter calibration sequences (`num_calibration_samples_block`, `num_calibration_samples_width`, "
            "`sequence_length`)",
            "a smaller `batch_size`",
            "more devices (`device_map='auto'` over several GPUs)",
        ]
        if cache and torch.device(device).type != "cpu":
            ways_out.insert(0, "`cache_device='cpu'` (the cache stays in RAM; one layer's inputs move to the device "
                               "for each candidate)")
        raise SearchMemoryError(
            f"The search needs about {_size(needed)} on {device} beyond the weights, but only {_size(free)} is free "
            f"there. Of it: cached hidden states {_size(cache)} "
            f"({cache // estimate.cache_per_layer if cache else 0} layer inputs x {num_sequences} sequences x "
            f"{config.sequence_length} tokens x hidden {model.config.hidden_size} x {embedding.element_size()} bytes), "
            f"layer arguments {_size(estimate.layer_arguments.get(device, 0))}, one scoring pass "
            f"{_size(estimate.scoring_pass.get(device, 0))}. Options: {'; '.join(ways_out)}."
        )
    return estimate


def _size(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.1f} MiB"


def _device_name(device: DeviceLike) -> str:
    """`str` of the device, with the current CUDA index made explicit (`"cuda"` -> `"cuda:0"`) when CUDA is there."""
    device = as_device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _config_dtype(model_config) -> torch.dtype:
    """The dtype a `transformers` config records (a dtype or its name), float32 when it records none."""
    dtype = getattr(model_config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype
