"""Every private upstream API this package relies on, and every upstream behaviour it overrides, in one place.

Each `UpstreamName` says where a name lives and which parameters this package passes it by name;
`tests/test_compat.py` imports every entry of `UPSTREAM_NAMES` and checks its signature (and the attributes the
overrides read), so an upgrade of transformers, optimum, optimum-intel or lm-eval that moves or changes one fails in
CI, not at a user's. optimum-intel's exporter (seconds to import) and lm-eval are imported on first use only.

Kept elsewhere, because they run before this package may be imported: the `optimum-cli` start-up hook that wraps
`OVExportCommand.run` (`optimum/commands/register/register_multipruner.py`; its pruned-checkpoint branch is
[`run_openvino_export_command`] below) and the worker loop of `benchmark.py` (OpenVINO and openvino-genai only).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from dataclasses import dataclass
from typing import Any, Callable

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
# `optimum-cli export openvino`: its `run` is wrapped at CLI start-up, and these parsed arguments are read or set.
OPENVINO_EXPORT_COMMAND_RUN = UpstreamName("optimum.commands.export.openvino", "OVExportCommand.run", ("self",))
OPENVINO_EXPORT_COMMAND_ARGS = ("model", "output", "task", "weight_format", "quant_mode", "group_size_fallback",
                                "cache_dir")
# Where the stock export configs are registered; `call_after_import` below watches its import.
OPENVINO_EXPORTERS_MODULE = "optimum.exporters.openvino"

PKV_GENERATOR_ATTRIBUTES = ("DUMMY_INPUT_GENERATOR_CLASSES", "DUMMY_PKV_GENERATOR_CLASS")


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


def export_model_config(export_config) -> Any:
    """The model config an optimum export config was built for (its private `_config`)."""
    return export_config._config


def main_quantize(**kwargs: Any) -> None:
    MAIN_QUANTIZE.load()(**kwargs)


def export_from_model(**kwargs: Any) -> Any:
    return EXPORT_FROM_MODEL.load()(**kwargs)


def convert_tokenizers(**kwargs: Any) -> None:
    CONVERT_TOKENIZERS.load()(**kwargs)


def prepare_openvino_export_args(args) -> None:
    """Adjust the parsed `optimum-cli export openvino` arguments of a pruned checkpoint: register the export configs,
    default the task to `text-generation-with-past`, pick the weight format from the *dense* size
    (`exporters.openvino.default_weight_format`) and let int4 adjust group sizes that do not divide pruned widths."""
    from transformers import AutoConfig

    from .exporters import TASKS
    from .exporters.openvino import default_weight_format, register_openvino_export

    register_openvino_export()
    if args.task == "auto":
        args.task = TASKS[-1]
    if args.weight_format is None and args.quant_mode is None:
        args.weight_format = default_weight_format(AutoConfig.from_pretrained(args.model, cache_dir=args.cache_dir))
    if args.weight_format == "int4" and args.group_size_fallback is None:
        args.group_size_fallback = "adjust"


def run_openvino_export_command(run: Callable[[Any], Any], command) -> Any:
    """`optimum-cli export openvino` of a pruned checkpoint (the CLI hook's replacement of `OVExportCommand.run`):
    [`prepare_openvino_export_args`], the stock `run`, then the IR folder gets the base model type and the pruning
    record (`exporters.finish_export`)."""
    from .exporters import finish_export

    prepare_openvino_export_args(command.args)
    result = run(command)
    finish_export(command.args.output, source=command.args.model, cache_dir=command.args.cache_dir)
    return result


# --------------------------------------------------------------------------- import hook (Python's importlib)
class _CallAfterExec(importlib.abc.Loader):
    """Runs the real loader of a module, then the callbacks."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: list[Callable[[], None]]) -> None:
        self.loader, self.callbacks = loader, callbacks

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        for callback in self.callbacks:
            callback()


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """One-shot `sys.meta_path` finder: wraps the loader of module `name`, then removes itself."""

    def __init__(self, name: str) -> None:
        self.name, self.callbacks = name, []

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _CallAfterExec(spec.loader, self.callbacks)
                return spec
        return None


def call_after_import(name: str, callback: Callable[[], None]) -> None:
    """Call `callback` once module `name` has been imported: now if it already is, else right after its import
    (at no import cost before that)."""
    if name in sys.modules:
        callback()
        return
    watcher = next((f for f in sys.meta_path if isinstance(f, _ImportWatcher) and f.name == name), None)
    if watcher is None:
        watcher = _ImportWatcher(name)
        sys.meta_path.insert(0, watcher)
    watcher.callbacks.append(callback)


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
    "attention_implementation",
    "call_after_import",
    "convert_tokenizers",
    "eager_attention_forward",
    "export_from_model",
    "export_model_config",
    "main_quantize",
    "prepare_openvino_export_args",
    "run_openvino_export_command",
    "with_past_key_values",
]
