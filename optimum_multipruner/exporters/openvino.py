"""OpenVINO export of pruned checkpoints through optimum-intel.

A pruned model keeps one KV-cache slot per *kept* attention layer, each with that layer's own number of KV heads (see
`surgery.compact_cache_slots`). optimum-intel's stock export configs assume `num_hidden_layers` identical slots, so
each family gets a subclass of its stock OpenVINO config whose dummy past-key-values and dynamic-axes tables follow
the `pruning` section of the config. Everything else (model patcher, inputs, stateful conversion) is the family's.

This module imports optimum-intel's export machinery (seconds); `optimum_multipruner.exporters` wraps it lazily.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from huggingface_hub.constants import HUGGINGFACE_HUB_CACHE
from optimum.exporters.openvino import main_export
from optimum.exporters.tasks import TasksManager
from optimum.intel.openvino.configuration import OVConfig, OVWeightQuantizationConfig
from optimum.utils.input_generators import DummyPastKeyValuesGenerator
from torch import nn
from transformers import AutoConfig

from optimum_multipruner_constants import PRUNED_MODEL_TYPE_PREFIX, WEIGHT_FORMATS

from .. import compat
from ..architectures import ADAPTERS, get_adapter
from ..modeling import check_finite_weights
from ..structure import PrunedStructure
from ..surgery import dense_parameter_count
from ..utils import atomic_directory, check_output_dir, get_logger
from . import TASKS, finish_export

logger = get_logger(__name__)

AUTO_INT8_PARAMETERS = 1e9  # optimum-intel's `_MAX_UNCOMPRESSED_SIZE`: larger models are exported as int8 by default
INT4_GROUP_SIZE = 128

EXPORT_CONFIGS: dict[str, type] = {}  # base model type -> registered OpenVINO export config class


def kept_kv_heads(config) -> list[int]:
    """KV heads of each kept attention layer, in cache-slot order (all layers when the config has no `pruning`)."""
    adapter = get_adapter(config)
    if getattr(config, "pruning", None) is None:
        return [adapter.attention_layout(config).num_kv_heads] * config.num_hidden_layers
    return [heads for heads in PrunedStructure.from_dict(config.pruning).num_key_value_heads if heads]


class PrunedPastKeyValuesGenerator(DummyPastKeyValuesGenerator):
    """Dummy past key/values with one `(key, value)` pair per kept attention layer, each with its own KV-head count."""

    def __init__(self, task: str, normalized_config, **kwargs: Any) -> None:
        super().__init__(task, normalized_config, **kwargs)
        config = normalized_config.config
        self.head_dim = get_adapter(config).attention_layout(config).head_dim
        self.kv_heads = kept_kv_heads(config)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        pairs = []
        for heads in self.kv_heads:
            shape = (self.batch_size, heads, self.sequence_length, self.head_dim)
            pairs.append(
                (
                    self.random_float_tensor(shape, framework=framework, dtype=float_dtype),
                    self.random_float_tensor(shape, framework=framework, dtype=float_dtype),
                )
            )
        return pairs


def _add_past_key_values(self, inputs_or_outputs: dict[str, dict[int, str]], direction: str) -> None:
    """Dynamic axes of the past (`inputs`) or present (`outputs`) KV tensors: one pair per kept attention layer."""
    if direction not in ("inputs", "outputs"):
        raise ValueError(f'direction must either be "inputs" or "outputs", but {direction} was given')
    if direction == "inputs":
        name, sequence = "past_key_values", "past_sequence_length"
    else:
        name, sequence = "present", "past_sequence_length + sequence_length"
    for slot in range(len(kept_kv_heads(compat.export_model_config(self)))):
        inputs_or_outputs[f"{name}.{slot}.key"] = {0: "batch_size", 2: sequence}
        inputs_or_outputs[f"{name}.{slot}.value"] = {0: "batch_size", 2: sequence}


def with_past_key_values(stock: type, generator: type, add_past_key_values: Callable, name: str, doc: str,
                         module: str) -> type:
    """Subclass of the OpenVINO export config `stock` whose dummy past key/values come from `generator` (in place of
    the stock one in `DUMMY_INPUT_GENERATOR_CLASSES` too) and whose `add_past_key_values` is the given one."""
    stock_generator = stock.DUMMY_PKV_GENERATOR_CLASS
    return type(
        name,
        (stock,),
        {
            "__module__": module,
            "__doc__": doc,
            "DUMMY_INPUT_GENERATOR_CLASSES": tuple(
                generator if stock_class is stock_generator else stock_class
                for stock_class in stock.DUMMY_INPUT_GENERATOR_CLASSES
            ),
            "DUMMY_PKV_GENERATOR_CLASS": generator,
            "add_past_key_values": add_past_key_values,
        },
    )


def _make_export_config(base_type: str) -> type:
    """Subclass of the family's stock OpenVINO export config with per-kept-layer past key/values."""
    stock = TasksManager.get_exporter_config_constructor(
        "openvino", model_type=base_type, task=TASKS[-1], library_name="transformers"
    ).func
    config_class = with_past_key_values(
        stock,
        PrunedPastKeyValuesGenerator,
        _add_past_key_values,
        name=f"MultiPruner{stock.__name__}",
        doc=f"`{stock.__name__}` for `{PRUNED_MODEL_TYPE_PREFIX}{base_type}` checkpoints.",
        module=__name__,
    )
    verified = ADAPTERS[base_type].openvino_max_transformers_version
    if verified is not None:
        config_class.MAX_TRANSFORMERS_VERSION = verified
    return config_class


def register_openvino_export() -> None:
    """Register an export config for every `multipruner_<family>` type with optimum's `TasksManager` (idempotent)."""
    register = TasksManager.create_register("openvino", overwrite_existing=True)
    module = sys.modules[__name__]
    for base_type in ADAPTERS:
        if base_type in EXPORT_CONFIGS:
            continue
        config_class = _make_export_config(base_type)
        register(PRUNED_MODEL_TYPE_PREFIX + base_type, *TASKS, library_name="transformers")(config_class)
        setattr(module, config_class.__name__, config_class)
        EXPORT_CONFIGS[base_type] = config_class


# --------------------------------------------------------------------------- weight formats
def default_weight_format(config) -> Optional[str]:
    """`"int8"` when the dense original has >= 1e9 parameters, else `None` (float IR).

    optimum-intel compresses to int8 by default only when the *exported* IR has >= 1e9 float weights, so a 1.1B model
    pruned to 0.8B would silently come out as an fp32 IR, three times larger than its dense int8 export. Deciding on
    the dense size keeps the pruned export in the same format as the dense one.
    """
    return "int8" if dense_parameter_count(config, get_adapter(config)) >= AUTO_INT8_PARAMETERS else None


def weight_compression_config(weight_format: str) -> OVWeightQuantizationConfig:
    """Data-free int8 (per-channel, asymmetric) or int4 (group 128, asymmetric) settings of `optimum-cli`.

    int4 uses `group_size_fallback="adjust"`: a pruned width not divisible by the group size gets the largest group
    size that divides it instead of failing (optimum-intel's per-model default configs do the same).
    """
    if weight_format == "int8":
        settings = {"bits": 8, "sym": False, "group_size": -1, "ratio": 1.0}
    elif weight_format == "int4":
        settings = {
            "bits": 4, "sym": False, "group_size": INT4_GROUP_SIZE, "ratio": 1.0, "group_size_fallback": "adjust"
        }
    else:
        raise ValueError(f"No weight compression for weight format {weight_format!r}; use 'int8' or 'int4'.")
    return OVWeightQuantizationConfig(**settings)


# --------------------------------------------------------------------------- export
def export_openvino(
    model_or_dir: Union[str, os.PathLike, nn.Module],
    output_dir: Union[str, os.PathLike],
    weight_format: Optional[str] = None,
    overwrite: bool = False,
    tokenizer=None,
    quantization_config: Optional[Union[OVWeightQuantizationConfig, dict]] = None,
    record=None,
    **kwargs: Any,
) -> str:
    """Export a pruned model (a directory, a Hub id, or a loaded model) to an OpenVINO IR directory.

    Args:
        model_or_dir: a pruned checkpoint directory or Hub id, or a loaded (pruned) model on the CPU, exported as it
            is in memory (its dtype; no copy, no temporary checkpoint) with `tokenizer`.
        output_dir: the IR directory; written atomically (a failed export leaves no partial output).
        weight_format: `"fp32"`, `"fp16"`, `"int8"`, `"int4"`, or `None` for int8 when the dense original has
            >= 1e9 parameters and fp32 otherwise.
        overwrite: replace a non-empty `output_dir` instead of raising `FileExistsError`.
        quantization_config: explicit `OVWeightQuantizationConfig` (or its dict) for int8/int4, instead of the defaults
            of [`weight_compression_config`].
        record: the `PruningRecord` to write into the IR directory; by default a checkpoint's own
            `pruning_record.json` is copied.
        kwargs: for a directory or Hub id, passed to `optimum.exporters.openvino.main_export`; for a loaded model, to
            `export_from_model` (e.g. `stateful`). `convert_tokenizer=False` skips the OpenVINO tokenizer models
            (needed by openvino-genai's `LLMPipeline`).

    The exported `config.json` gets the base `model_type`/`architectures` (the `pruning` section stays as information),
    so a process without this package loads the IR with `OVModelForCausalLM.from_pretrained(output_dir)`.
    Returns the output directory.
    """
    if weight_format is not None and weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"`weight_format` must be None or one of {WEIGHT_FORMATS}, got {weight_format!r}.")
    check_output_dir(output_dir, overwrite)  # before any (possibly long) work
    check_finite_weights(model_or_dir)
    register_openvino_export()
    loaded = isinstance(model_or_dir, nn.Module)
    source = None if loaded else str(model_or_dir)
    if loaded and _strip_if_quantization_aware(model_or_dir):
        if weight_format not in (None, "int4") or quantization_config is not None:
            raise ValueError("This model went through a quantization-aware recovery: its int4 weights are trained, so "
                             "it exports as they are (weight_format None or 'int4', no quantization_config).")
        weight_format = "fp32"  # no post-export compression: the decompressors carry the trained int4 weights
    if weight_format is None and quantization_config is None:
        weight_format = default_weight_format(model_or_dir.config if loaded else AutoConfig.from_pretrained(source))
    if quantization_config is not None:
        if weight_format not in (None, "int8", "int4"):
            raise ValueError(f"`quantization_config` cannot be combined with weight_format={weight_format!r}.")
    elif weight_format in ("int8", "int4"):
        quantization_config = weight_compression_config(weight_format)
    ov_config = OVConfig(dtype=weight_format if weight_format in ("fp16", "fp32") else "fp32")
    task = kwargs.pop("task", TASKS[-1])
    convert_tokenizer = kwargs.pop("convert_tokenizer", True)

    with atomic_directory(output_dir, overwrite) as tmp:
        logger.info("Exporting %s to OpenVINO (%s weights) into %s", source or type(model_or_dir).__name__,
                    weight_format or "fp32", output_dir)
        if loaded:
            _export_loaded_model(model_or_dir, Path(tmp), task, ov_config, tokenizer, convert_tokenizer, **kwargs)
        else:
            main_export(source, Path(tmp), task=task, ov_config=ov_config, library_name="transformers",
                        convert_tokenizer=convert_tokenizer, **kwargs)
        if quantization_config is not None:
            # The same post-export compression step `optimum-cli export openvino --weight-format` runs.
            compat.main_quantize(
                model_name_or_path=source or tmp,
                task=task,
                library_name="transformers",
                quantization_config=quantization_config,
                output=Path(tmp),
                cache_dir=kwargs.get("cache_dir", HUGGINGFACE_HUB_CACHE),
            )
        finish_export(tmp, source=source, record=record, cache_dir=kwargs.get("cache_dir"))
    return str(output_dir)


def _strip_if_quantization_aware(model: nn.Module) -> bool:
    """Whether `model` carries NNCF quantizers from a quantization-aware recovery; stripped in place to packed int4
    weights with decompressors, the form the exporter writes as int4 constants."""
    from ..recovery.quantization import is_fake_quantized, is_int4_stripped, strip_to_int4

    if is_fake_quantized(model):
        strip_to_int4(model)
    return is_int4_stripped(model)


def _export_loaded_model(model: nn.Module, output: Path, task: str, ov_config: OVConfig, tokenizer,
                         convert_tokenizer: bool, **kwargs: Any) -> None:
    """What `main_export` does once it has loaded a model: convert it (a 16-bit model through optimum-intel's 16-bit
    patching), save its config, generation config and tokenizer, and convert the tokenizer."""
    devices = {parameter.device.type for parameter in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"The OpenVINO export traces the model on the CPU, but it is on {sorted(devices)}; "
                         "move it with `model.to('cpu')` first.")
    preprocessors = [tokenizer] if tokenizer is not None else []
    dtype = model.dtype
    sixteen_bit = dtype in (torch.float16, torch.bfloat16)
    compat.export_from_model(
        model=model, output=output, task=task, ov_config=ov_config, preprocessors=preprocessors,
        patch_16bit_model=sixteen_bit, **kwargs,
    )
    if sixteen_bit:  # the 16-bit patching leaves some modules in float32 (exactly: back to `dtype` is lossless)
        model.to(dtype)
    if convert_tokenizer and tokenizer is not None:
        compat.convert_tokenizers(
            library_name="transformers", output=output, model=model, preprocessors=preprocessors, task=task
        )
