"""Every private upstream API this package relies on, and every upstream behaviour it overrides, in one place.

Each `UpstreamName` says where a name lives and which parameters this package passes it by name;
`tests/test_compat.py` imports every entry of `UPSTREAM_NAMES` and checks its signature (and the attributes the
overrides read), so an upgrade of transformers, optimum, optimum-intel or lm-eval that moves or changes one fails in
CI, not at a user's. optimum-intel's exporter (seconds to import) and lm-eval are imported on first use only. This
module holds upstream names and their thin accessors only: what uses them lives with its own concept (the export
configs and `optimum-cli export openvino-pruned` in `exporters/`, the import watcher in `utils.py`). Not yet here:
the private names of `modeling.py` and `architectures/` (being extended; they move in a later round).

Kept elsewhere, because it runs before this package may be imported: the worker loop of `benchmark.py` (OpenVINO and
openvino-genai only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.phi3.modeling_phi3 import Phi3Attention, apply_rotary_pos_emb, eager_attention_forward


@dataclass(frozen=True)
class UpstreamName:
    """An upstream function, class or method: `module` and dotted `qualname`; `parameters` are those this package
    passes by name (the upstream signature must accept each of them)."""

    module: str
    qualname: str
    parameters: tuple[str, ...] = ()

    def load(self) -> Any:
        """Import the module and return the object (raises `ImportError`/`AttributeError` when it is gone)."""
        obj = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj


# --------------------------------------------------------------------------- transformers
# `architectures/phi3.py` forks `Phi3Attention.forward` (the fused q/k/v split reads the dense head count from the
# global config); the fork calls these helpers the way the stock forward does.
PHI3_ATTENTION_FORWARD = UpstreamName(
    "transformers.models.phi3.modeling_phi3", "Phi3Attention.forward",
    ("hidden_states", "position_embeddings", "attention_mask", "past_key_values"),
)
PHI3_APPLY_ROTARY_POS_EMB = UpstreamName(
    "transformers.models.phi3.modeling_phi3", "apply_rotary_pos_emb", ("q", "k", "cos", "sin")
)
PHI3_EAGER_ATTENTION = UpstreamName(
    "transformers.models.phi3.modeling_phi3", "eager_attention_forward",
    ("module", "query", "key", "value", "attention_mask", "scaling", "dropout"),
)
ATTENTION_INTERFACE = UpstreamName(
    "transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS.get_interface", ("attn_implementation", "default")
)


def attention_implementation(config) -> str:
    """The attention kernel a model config selected (transformers' private `config._attn_implementation`)."""
    return config._attn_implementation


def set_attention_implementation(config, implementation: str) -> None:
    """Select the attention kernel of a model config (transformers' private `config._attn_implementation`)."""
    config._attn_implementation = implementation


# --------------------------------------------------------------------------- accelerate
# `add_hook_to_module` keeps a module's hook (a `SequentialHook` for several) in the private attribute `_hf_hook`;
# `devices.py` reads it without importing accelerate.
ACCELERATE_ADD_HOOK = UpstreamName("accelerate.hooks", "add_hook_to_module", ("module", "hook", "append"))
ACCELERATE_HOOK_ATTRIBUTE = "_hf_hook"


def accelerate_hook(module) -> Any:
    """The accelerate hook attached to `module` (`add_hook_to_module`), or None."""
    return getattr(module, ACCELERATE_HOOK_ATTRIBUTE, None)


# --------------------------------------------------------------------------- optimum / optimum-intel export
# The `multipruner_<family>` export configs subclass the family's stock OpenVINO config and swap its dummy
# past-key-values generator and `add_past_key_values` for per-kept-layer ones (`exporters/openvino.py`).
DUMMY_PKV_GENERATOR = UpstreamName(
    "optimum.utils.input_generators", "DummyPastKeyValuesGenerator", ("task", "normalized_config")
)
DUMMY_PKV_GENERATE = UpstreamName(
    "optimum.utils.input_generators", "DummyPastKeyValuesGenerator.generate",
    ("input_name", "framework", "int_dtype", "float_dtype"),
)
RANDOM_FLOAT_TENSOR = UpstreamName(
    "optimum.utils.input_generators", "DummyPastKeyValuesGenerator.random_float_tensor", ("shape", "framework", "dtype")
)
ADD_PAST_KEY_VALUES = UpstreamName(
    "optimum.exporters.openvino.base", "OpenVINOConfigWithPast.add_past_key_values", ("inputs_or_outputs", "direction")
)
TEXT_DECODER_EXPORT_CONFIG = UpstreamName("optimum.exporters.openvino.config", "TextDecoderOpenVINOConfig")
# Post-export weight compression, the step `optimum-cli export openvino --weight-format int8|int4` runs.
MAIN_QUANTIZE = UpstreamName(
    "optimum.exporters.openvino.__main__", "_main_quantize",
    ("model_name_or_path", "task", "library_name", "quantization_config", "output", "cache_dir"),
)
# Export of a model already in memory (what `main_export` calls after loading it), and its tokenizer conversion.
EXPORT_FROM_MODEL = UpstreamName(
    "optimum.exporters.openvino.convert", "export_from_model",
    ("model", "output", "task", "ov_config", "stateful", "preprocessors", "patch_16bit_model"),
)
CONVERT_TOKENIZERS = UpstreamName(
    "optimum.exporters.openvino.__main__", "maybe_convert_tokenizers",
    ("library_name", "output", "model", "preprocessors", "task"),
)
# `optimum-cli export openvino`: `export openvino-pruned` runs its `run`, and reads or sets these parsed arguments.
OPENVINO_EXPORT_COMMAND_RUN = UpstreamName("optimum.commands.export.openvino", "OVExportCommand.run", ("self",))
OPENVINO_EXPORT_COMMAND_ARGS = ("model", "output", "task", "weight_format", "quant_mode", "group_size_fallback",
                                "cache_dir")
# Where the stock export configs are registered; `exporters` registers ours once it is imported.
OPENVINO_EXPORTERS_MODULE = "optimum.exporters.openvino"

# The attributes of a stock export config that `exporters.openvino.with_past_key_values` replaces.
PKV_GENERATOR_ATTRIBUTES = ("DUMMY_INPUT_GENERATOR_CLASSES", "DUMMY_PKV_GENERATOR_CLASS")


def export_model_config(export_config) -> Any:
    """The model config an optimum export config was built for (its private `_config`)."""
    return export_config._config


def main_quantize(**kwargs: Any) -> None:
    MAIN_QUANTIZE.load()(**kwargs)


def export_from_model(**kwargs: Any) -> Any:
    return EXPORT_FROM_MODEL.load()(**kwargs)


def convert_tokenizers(**kwargs: Any) -> None:
    CONVERT_TOKENIZERS.load()(**kwargs)


# --------------------------------------------------------------------------- lm-eval (zero-shot evaluation)
LM_EVAL_HFLM = UpstreamName(
    "lm_eval.models.huggingface", "HFLM", ("pretrained", "tokenizer", "backend", "batch_size", "add_bos_token")
)
LM_EVAL_TASK_MANAGER = UpstreamName("lm_eval.tasks", "TaskManager", ("include_path", "include_defaults", "metadata"))
LM_EVAL_SIMPLE_EVALUATE = UpstreamName(
    "lm_eval", "simple_evaluate",
    ("model", "tasks", "num_fewshot", "limit", "task_manager", "log_samples", "random_seed", "numpy_random_seed",
     "torch_random_seed"),
)
LM_EVAL_HELLASWAG_PROCESS_DOCS = UpstreamName("lm_eval.tasks.hellaswag.utils", "process_docs", ("dataset",))

UPSTREAM_NAMES: tuple[UpstreamName, ...] = (
    PHI3_ATTENTION_FORWARD,
    PHI3_APPLY_ROTARY_POS_EMB,
    PHI3_EAGER_ATTENTION,
    ATTENTION_INTERFACE,
    ACCELERATE_ADD_HOOK,
    DUMMY_PKV_GENERATOR,
    DUMMY_PKV_GENERATE,
    RANDOM_FLOAT_TENSOR,
    ADD_PAST_KEY_VALUES,
    TEXT_DECODER_EXPORT_CONFIG,
    MAIN_QUANTIZE,
    EXPORT_FROM_MODEL,
    CONVERT_TOKENIZERS,
    OPENVINO_EXPORT_COMMAND_RUN,
    LM_EVAL_HFLM,
    LM_EVAL_TASK_MANAGER,
    LM_EVAL_SIMPLE_EVALUATE,
    LM_EVAL_HELLASWAG_PROCESS_DOCS,
)

__all__ = [
    "ALL_ATTENTION_FUNCTIONS",
    "OPENVINO_EXPORTERS_MODULE",
    "Phi3Attention",
    "UPSTREAM_NAMES",
    "UpstreamName",
    "apply_rotary_pos_emb",
    "accelerate_hook",
    "attention_implementation",
    "convert_tokenizers",
    "eager_attention_forward",
    "export_from_model",
    "export_model_config",
    "main_quantize",
]
