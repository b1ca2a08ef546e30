"""optimum-multipruner: training-free structured pruning (MultiPruner, BlockPruner) for Hugging Face LLMs.

Importing the package registers the pruned model types (`multipruner_llama`, ...) with transformers' Auto classes,
so `AutoModelForCausalLM.from_pretrained(pruned_dir)` works.
"""

from .architectures import ADAPTERS, get_adapter
from .configuration import FastSearchConfig, MultiPrunerConfig
from .exporters import enable_lazy_openvino_registration, export_gguf, export_openvino
from .modeling import register_pruned_models
from .pruner import MultiPruner
from .record import PruningRecord, PruningStep
from .recovery import RecoveryConfig
from .structure import PrunedStructure
from .surgery import count_parameters
from .version import __version__

register_pruned_models()
enable_lazy_openvino_registration()  # OpenVINO export configs register when optimum's OpenVINO exporter is imported

SUPPORTED_MODEL_TYPES = tuple(sorted(ADAPTERS))

__all__ = [
    "FastSearchConfig",
    "MultiPruner",
    "MultiPrunerConfig",
    "PrunedStructure",
    "PruningRecord",
    "PruningStep",
    "RecoveryConfig",
    "SUPPORTED_MODEL_TYPES",
    "count_parameters",
    "export_gguf",
    "export_openvino",
    "get_adapter",
    "__version__",
]
