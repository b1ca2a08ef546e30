"""Recovery after pruning: distillation from the dense model (full fine-tuning or LoRA) on transformers' `Trainer`.

    pruner.prune(config)
    pruner.recover(RecoveryConfig(teacher="dense_dir", dataset="c4.jsonl", max_tokens=1_000_000))
    pruner.save_pretrained("pruned-recovered")

`RecoveryConfig` imports no training code; `recover` and its checks (which import `Trainer` and PEFT's caller) load
on first use.
"""

from .configuration import RECOVERY_CONFIG_NAME, RecoveryConfig

_TRAINING_NAMES = ("check_lora_targets", "check_teacher", "last_complete_checkpoint", "recover")


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        from . import runner as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RECOVERY_CONFIG_NAME", "RecoveryConfig", *_TRAINING_NAMES]
